// Runs the reference face pipeline of @vladmandic/face-api 1.7.15 (TF.js 4.22 CPU backend) over a
// few real photos and writes what gatematch's fidelity tests compare against: per face the 68
// landmarks, the descriptor box of MODEL.md step 1, the 128-d descriptor and statistics of the
// network's input tensor.
//
// Usage (from this directory, after `npm ci`, ../fetch-model.sh and
// `cargo build --release --example face_decode`): `npm run fixtures`, which runs
//   node make_fixtures.mjs --models ../../models/face-api-1.7.15 \
//       --decoder ../../target/release/examples/face_decode --out ../../tests/fixtures/face IMAGE...
//
// The photos are decoded by gatematch's own decoder (the face_decode example, PPM on stdout),
// not by a JavaScript one: two conforming JPEG decoders differ by a level or two on many pixels
// (jpeg-js 0.4.4 against the image crate moved these descriptors by 1.4e-3), ten times the
// fidelity tolerance. The decoder is not part of what MODEL.md specifies; the network and the
// preprocessing are, and they must be compared on identical pixels. The fixture records the
// SHA-256 of those pixels, so a change in the Rust decoder shows up as a failed test.
//
// Why the CommonJS `face-api.node-wasm.js` build and not the ESM bundle: under Node the ESM
// bundle's platform shim has `util` stubbed out ("this.util.TextEncoder is not a constructor")
// and the ESM no-bundle build imports tfjs paths that Node's ESM resolver refuses. The wasm build
// takes tfjs as a dependency, which ships the CPU backend; we select that backend explicitly.

import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');

const { tf } = faceapi;

function parseArgs(argv) {
  const args = { models: null, decoder: null, out: null, images: [] };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--models') args.models = argv[++i];
    else if (argv[i] === '--decoder') args.decoder = argv[++i];
    else if (argv[i] === '--out') args.out = argv[++i];
    else args.images.push(argv[i]);
  }
  if (!args.models || !args.decoder || !args.out || args.images.length === 0) {
    throw new Error('usage: make_fixtures.mjs --models DIR --decoder BIN --out DIR IMAGE...');
  }
  return args;
}

// Decodes with gatematch's decoder: a binary PPM ("P6\n<w> <h>\n255\n" + RGB) on stdout.
function decodeRgb(decoder, file) {
  const ppm = execFileSync(decoder, [file], { maxBuffer: 1 << 30 });
  const header = /^P6\n(\d+) (\d+)\n255\n/.exec(ppm.subarray(0, 64).toString('latin1'));
  if (!header) throw new Error(`${file}: decoder did not write a PPM`);
  const [text, width, height] = [header[0], Number(header[1]), Number(header[2])];
  const rgb = new Uint8Array(ppm.subarray(text.length));
  if (rgb.length !== width * height * 3) throw new Error(`${file}: short PPM`);
  return { width, height, rgb };
}

function stats(values) {
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  let sumSq = 0;
  for (const v of values) {
    min = Math.min(min, v);
    max = Math.max(max, v);
    sum += v;
    sumSq += v * v;
  }
  return { count: values.length, min, max, sum, sum_sq: sumSq };
}

// Statistics of the two tensors the descriptor network sees: the 150x150 resized crop (0..255)
// and the normalised input. Recomputed here with the package's own NetInput so that a mismatch
// can be located to before or after normalisation.
async function inputStats(imageTensor, box) {
  const [face] = await faceapi.extractFaceTensors(imageTensor, [box]);
  const netInput = await faceapi.toNetInput(face);
  const resized = netInput.toBatchTensor(150, true);
  const mean = tf.tensor1d([122.782, 117.001, 104.298]);
  const normalized = tf.div(tf.sub(resized, mean), 255);
  const result = {
    crop_height: face.shape[0],
    crop_width: face.shape[1],
    resized: stats(await resized.data()),
    normalized: stats(await normalized.data()),
  };
  tf.dispose([face, resized, mean, normalized]);
  return result;
}

async function describeImage(decoder, file) {
  const { width, height, rgb } = decodeRgb(decoder, file);
  const imageTensor = tf.tensor3d(Int32Array.from(rgb), [height, width, 3], 'int32');
  const results = await faceapi
    .detectAllFaces(imageTensor, new faceapi.SsdMobilenetv1Options({ minConfidence: 0.5 }))
    .withFaceLandmarks()
    .withFaceDescriptors();

  const faces = [];
  for (const result of results) {
    const landmarks = result.landmarks.positions.map((p) => [p.x, p.y]);
    // The box the pipeline crops for the descriptor (ComputeFaceDescriptorsTasks), then the
    // border clip of extractFaceTensors.
    const box = result.landmarks
      .align(null, { useDlibAlignment: true })
      .clipAtImageBorders(width, height);
    const descriptor = Array.from(result.descriptor);
    // Sanity: the descriptor of that box alone must equal the pipeline's.
    const [face] = await faceapi.extractFaceTensors(imageTensor, [box]);
    const again = await faceapi.nets.faceRecognitionNet.computeFaceDescriptor(face);
    face.dispose();
    const drift = Math.max(...descriptor.map((v, i) => Math.abs(v - again[i])));
    if (drift !== 0) throw new Error(`${file}: descriptor of the box differs by ${drift}`);

    faces.push({
      detection_score: result.detection.score,
      detection_box: {
        x: result.detection.box.x,
        y: result.detection.box.y,
        width: result.detection.box.width,
        height: result.detection.box.height,
      },
      landmarks,
      // The frame the landmarks were detected in (the detector's face crop). The reference's
      // box formula uses its size, not the image's: width = min(s, frame width + x).
      landmarks_frame: { width: result.landmarks.imageWidth, height: result.landmarks.imageHeight },
      box: { x: box.x, y: box.y, width: box.width, height: box.height },
      input_stats: await inputStats(imageTensor, box),
      descriptor,
    });
  }
  imageTensor.dispose();
  faces.sort((a, b) => a.box.x - b.box.x);
  return {
    image: path.basename(file),
    width,
    height,
    rgb_sha256: createHash('sha256').update(rgb).digest('hex'),
    faces,
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  await tf.setBackend('cpu');
  await tf.ready();
  await faceapi.nets.ssdMobilenetv1.loadFromDisk(args.models);
  await faceapi.nets.faceLandmark68Net.loadFromDisk(args.models);
  await faceapi.nets.faceRecognitionNet.loadFromDisk(args.models);

  const images = [];
  for (const file of args.images) {
    const described = await describeImage(args.decoder, file);
    console.log(`${described.image}: ${described.faces.length} face(s)`);
    images.push(described);
  }
  mkdirSync(args.out, { recursive: true });
  const fixture = {
    generator: 'scripts/reference/make_fixtures.mjs',
    reference: {
      package: '@vladmandic/face-api@1.7.15',
      build: 'dist/face-api.node-wasm.js',
      tfjs: tf.version_core,
      backend: tf.getBackend(),
      decoder: 'examples/face_decode (gatematch, image 0.25 crate)',
      pipeline: 'detectAllFaces(SsdMobilenetv1, minConfidence 0.5).withFaceLandmarks().withFaceDescriptors()',
    },
    images,
  };
  writeFileSync(path.join(args.out, 'reference.json'), `${JSON.stringify(fixture, null, 1)}\n`);
}

await main();
