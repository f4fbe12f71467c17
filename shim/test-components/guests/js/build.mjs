// node build.mjs SOURCE.js WIT_DIR OUT.wasm NODE_MODULES
// Calls componentize-js directly: its CLI cannot read WIT from a directory in this version.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [source, wit, out, nodeModules] = process.argv.slice(2);
const entry = join(nodeModules, '@bytecodealliance/componentize-js/src/componentize.js');
const { componentize } = await import(pathToFileURL(entry).href);
const { component } = await componentize({
  sourcePath: source,
  witPath: wit,
  worldName: 'guest',
  disableFeatures: ['fetch-event'],
});
await writeFile(out, component);
