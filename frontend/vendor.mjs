// Copy the chat page's third-party files from node_modules/ into the package's committed
// relay/frontend/vendor/ (no bundler, no build), with their licences and a README naming each
// library's version and licence. Run by hand after changing a pin: `npm ci && npm run vendor`.
// `node vendor.mjs <folder>` writes elsewhere (tests/test_vendor.py compares the two).
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const vendor = resolve(process.argv[2] ?? join(here, "..", "relay", "frontend", "vendor"));
const pins = JSON.parse(readFileSync(join(here, "package.json"), "utf8")).dependencies;

// package -> [source under its folder, name under vendor/]; `.mjs` is renamed `.js` so every
// server sends it with a JavaScript MIME type (module scripts are refused otherwise).
const LIBRARIES = {
  marked: [
    ["lib/marked.esm.js", "marked.esm.js"],
    ["LICENSE", "LICENSE.marked"],
  ],
  dompurify: [
    ["dist/purify.es.mjs", "purify.es.js"],
    ["LICENSE", "LICENSE.dompurify"],
    ["LICENSE-MPL", "LICENSE-MPL.dompurify"],
  ],
  "@highlightjs/cdn-assets": [
    ["es/highlight.min.js", "highlight.min.js"],
    ["styles/github.min.css", "highlight-light.min.css"],
    ["styles/github-dark.min.css", "highlight-dark.min.css"],
    ["LICENSE", "LICENSE.highlightjs"],
  ],
};

const rows = [];
rmSync(vendor, { recursive: true, force: true });
mkdirSync(vendor, { recursive: true });
for (const [name, files] of Object.entries(LIBRARIES)) {
  const meta = JSON.parse(readFileSync(join(modules, name, "package.json"), "utf8"));
  if (meta.version !== pins[name]) {
    throw new Error(`node_modules has ${name} ${meta.version}, package.json pins ${pins[name]}: run npm ci`);
  }
  for (const [source, target] of files) {
    let content = readFileSync(join(modules, name, source));
    if (target.endsWith(".js")) {
      // The source maps are not copied, so drop the comments that point at them.
      content = content.toString("utf8").replace(/^\/\/# sourceMappingURL=.*$/m, "");
    }
    writeFileSync(join(vendor, target), content);
  }
  rows.push(`| ${name} | ${meta.version} | ${meta.license} | ${files.map(([, t]) => t).join(", ")} |`);
}
writeFileSync(join(vendor, "README.md"), `# Vendored browser libraries

Copied from npm by \`frontend/vendor.mjs\` (\`cd frontend && npm ci && npm run vendor\`), pinned in
\`frontend/package.json\`; do not edit by hand. Each library's licence is kept beside it.

| library | version | licence | files |
|---|---|---|---|
${rows.join("\n")}
`);
console.log(`vendor.mjs: copied ${Object.keys(LIBRARIES).length} libraries into ${vendor}`);
