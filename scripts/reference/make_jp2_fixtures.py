"""Writes the JPEG 2000 face fixtures (tests/fixtures/face/*.jp2, *.j2k) with Pillow/OpenJPEG.

Chips hold the traveller's photo as JPEG 2000 (DG2); these fixtures let the tests run that path
on real faces without shipping a passport:

- obama2_crop.jp2: the reference's descriptor box of obama2.jpg (tests/fixtures/face/
  reference.json), cut from gatematch's own decoding of the JPEG and stored losslessly. As a
  ready crop it must give the reference descriptor itself.
- obama2_chip.jp2: a portrait cut around the same face, lossy at about 20 KB as chip photos are;
  its origin in obama2.jpg is in jpeg2000.json so that the tests can move the landmarks.
- grey.j2k: a bare codestream, 8-bit grey, lossless, 37 x 23 of a seeded pattern; grey.png
  holds the same pixels.

Run from the repository root (Pillow 10 or later with OpenJPEG, e.g. `pip install pillow`):

    cargo build --release --example face_decode
    target/release/examples/face_decode tests/fixtures/face/obama2.jpg > /tmp/obama2.ppm
    python3 scripts/reference/make_jp2_fixtures.py /tmp/obama2.ppm
"""

import json
import random
import sys

from PIL import Image

OUT = "tests/fixtures/face/"
CHIP_ORIGIN = (110, 200)
CHIP_SIZE = (390, 500)


def main(ppm_path):
    reference = json.load(open(OUT + "reference.json"))
    face = reference["images"][0]["faces"][0]
    assert reference["images"][0]["image"] == "obama2.jpg"
    photo = Image.open(ppm_path).convert("RGB")

    b = face["box"]
    crop = photo.crop((b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]))
    crop.save(OUT + "obama2_crop.jp2", irreversible=False)

    x, y = CHIP_ORIGIN
    chip = photo.crop((x, y, x + CHIP_SIZE[0], y + CHIP_SIZE[1]))
    chip.save(OUT + "obama2_chip.jp2", irreversible=True, quality_mode="rates",
              quality_layers=[CHIP_SIZE[0] * CHIP_SIZE[1] * 3 / 20_000])

    rng = random.Random(2026)
    grey = Image.new("L", (37, 23))
    grey.putdata([rng.randrange(256) for _ in range(37 * 23)])
    grey.save(OUT + "grey.j2k", irreversible=False)
    grey.save(OUT + "grey.png")

    json.dump({"chip_origin": list(CHIP_ORIGIN), "crop_box": b}, open(OUT + "jpeg2000.json", "w"),
              indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
