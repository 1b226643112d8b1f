// Validates one .glb/.gltf file with the Khronos glTF Validator and prints its JSON report on stdout.
// usage: node tools/gltf-validator/validate.mjs FILE
import { readFile } from 'node:fs/promises';
import validator from 'gltf-validator';

const file = process.argv[2];
if (!file) {
  console.error('usage: node validate.mjs FILE');
  process.exit(2);
}
const bytes = new Uint8Array(await readFile(file));
const report = await validator.validateBytes(bytes, { uri: file, maxIssues: 1000 });
console.log(JSON.stringify(report, null, 1));
