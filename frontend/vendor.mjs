// Copy the chat page's third-party files from node_modules/ into vendor/ (no bundler, no build).
// Run by `npm ci` (postinstall) or `npm run vendor`; vendor/ is gitignored.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const vendor = join(here, "vendor");

// [source under node_modules/, name under vendor/]; `.mjs` is renamed `.js` so every server
// sends it with a JavaScript MIME type (module scripts are refused otherwise).
const FILES = [
  ["marked/lib/marked.esm.js", "marked.esm.js"],
  ["marked/LICENSE", "LICENSE.marked"],
  ["dompurify/dist/purify.es.mjs", "purify.es.js"],
  ["dompurify/LICENSE", "LICENSE.dompurify"],
  ["@highlightjs/cdn-assets/es/highlight.min.js", "highlight.min.js"],
  ["@highlightjs/cdn-assets/styles/github.min.css", "highlight-light.min.css"],
  ["@highlightjs/cdn-assets/styles/github-dark.min.css", "highlight-dark.min.css"],
  ["@highlightjs/cdn-assets/LICENSE", "LICENSE.highlightjs"],
];

rmSync(vendor, { recursive: true, force: true });
mkdirSync(vendor, { recursive: true });
for (const [source, target] of FILES) {
  let content = readFileSync(join(modules, source));
  if (target.endsWith(".js")) {
    // The source maps are not copied, so drop the comments that point at them.
    content = content.toString("utf8").replace(/^\/\/# sourceMappingURL=.*$/m, "");
  }
  writeFileSync(join(vendor, target), content);
}
console.log(`vendor.mjs: copied ${FILES.length} files into ${vendor}`);
