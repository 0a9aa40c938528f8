#!/usr/bin/env bash
# Fetch the published face networks (npm package @vladmandic/face-api, MIT) into a local cache
# and verify every model file by SHA-256 against the table in MODEL.md.
#
# Usage: scripts/fetch-model.sh [CACHE_DIR]     (default: models/ at the repository root)
# Result: CACHE_DIR/face-api-1.7.15/<model files>. Idempotent: when all files are present and
# verified it does nothing (no network). Needs npm, tar and sha256sum.
set -euo pipefail

readonly PACKAGE="@vladmandic/face-api"
readonly VERSION="1.7.15"
readonly TARBALL="vladmandic-face-api-${VERSION}.tgz"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${1:-${repo_root}/models}"
dest="${cache_dir}/face-api-${VERSION}"

# file name, then expected SHA-256 (from MODEL.md; a change there must be made here too). The
# package's demo photos (group photos, several faces each) come too: the capture-quality and
# detection tests use them as real faces (tests/fixtures/face/demo_samples.json).
readonly CHECKSUMS="\
cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b  face_recognition_model-weights_manifest.json
b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589  face_recognition_model.bin
5d1af4849ac48d5b985f4a9b16010c512353ddd6fcc63d50fd0bc9e9e64296e5  tiny_face_detector_model-weights_manifest.json
b7503ce7df31039b1c43316a9b865cab6a70dd748cc602d3fa28b551503c3871  tiny_face_detector_model.bin
9a1a5dd19fd814fd5095c3cb58f8e0d3193b8c5b9a6715b30a69d559aea31ad4  face_landmark_68_tiny_model-weights_manifest.json
b98e9f2f7da76f8a6dda9741a36ed485b224b889d552de2b2c1bb16217f67bfc  face_landmark_68_tiny_model.bin
888f744dffbc84f5f060d1f8427d9742341943a2dfaaf9205d10029b7e7a2955  ssd_mobilenetv1_model-weights_manifest.json
2835640602d53718aa6ae9a42896327eaa21beefed056c218d32ca7d79e1e2f8  ssd_mobilenetv1_model.bin
ca4886639f86e99b39fed0c155f81b63317225773bd9616716e887b0153389c9  face_landmark_68_model-weights_manifest.json
4611ef65c87d836d03d684b30eec4d195d8b219fa1dd58fc58945831c6b9299b  face_landmark_68_model.bin
8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51  demo/sample1.jpg
7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691  demo/sample2.jpg
8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936  demo/sample3.jpg
729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc  demo/sample4.jpg
6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938  demo/sample5.jpg
9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87  demo/sample6.jpg"

die() {
    echo "fetch-model: error: $*" >&2
    exit 1
}

# Succeeds when every listed file is in $1 with the expected digest; prints the failures.
verify() {
    (cd "$1" && printf '%s\n' "${CHECKSUMS}" | sha256sum --check --quiet --strict -) 2>&1
}

for tool in npm tar sha256sum; do
    command -v "${tool}" >/dev/null || die "'${tool}' is not installed"
done

if [[ -d "${dest}" ]] && verify "${dest}" >/dev/null; then
    echo "fetch-model: ${dest} is present and verified"
    exit 0
fi

mkdir -p "${cache_dir}"
work="$(mktemp -d "${cache_dir}/.fetch.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

echo "fetch-model: npm pack ${PACKAGE}@${VERSION}"
(cd "${work}" && npm pack --silent "${PACKAGE}@${VERSION}" >/dev/null) \
    || die "npm pack ${PACKAGE}@${VERSION} failed (is the npm registry reachable?)"
[[ -f "${work}/${TARBALL}" ]] || die "npm pack did not produce ${TARBALL}"
tar -xzf "${work}/${TARBALL}" -C "${work}" package/model package/LICENSE package/demo \
    || die "${TARBALL} has no package/model directory"
mkdir -p "${work}/package/model/demo" "${work}/out/demo"
mv "${work}"/package/demo/sample*.jpg "${work}/package/model/demo/"

if ! failures="$(verify "${work}/package/model")"; then
    die "checksum verification failed for the downloaded package:
${failures}
The registry served different bytes than MODEL.md lists; refusing to install them."
fi

# Install the verified files only, then swap the directory in whole so that a half-written
# cache never passes as complete.
printf '%s\n' "${CHECKSUMS}" | while read -r _ name; do
    cp "${work}/package/model/${name}" "${work}/out/${name}"
done
cp "${work}/package/LICENSE" "${work}/out/LICENSE"
verify "${work}/out" >/dev/null || die "copy of the verified files failed verification"
rm -rf "${dest}"
mv "${work}/out" "${dest}"
echo "fetch-model: installed and verified ${dest}"
