// Deterministic corpus of strings that exercise the LLaMA 3 pre-tokenizer and BPE: prose,
// source code, numbers, whitespace runs, several scripts, emoji, combining marks, contractions
// and special-token strings. The same seed always gives the same corpus.
"use strict";

// xorshift32: a small deterministic generator; Math.random cannot be seeded.
function makeRandom(seed) {
  let state = seed >>> 0 || 1;
  const next = () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  return {
    int: (n) => next() % n,
    pick: (items) => items[next() % items.length],
    chance: (p) => next() / 4294967296 < p,
  };
}

const WORDS = [
  "the", "a", "little", "girl", "named", "Lily", "once", "upon", "time", "there", "was",
  "tokenizer", "quantization", "per-channel", "outlier", "weights", "CPU", "server", "model",
  "Hello", "world", "HTTP", "JSON", "naïve", "café", "résumé", "über", "façade", "coöperate",
  "don", "it", "they", "we", "I", "you", "she", "Mr.", "e.g.", "etc.", "U.S.A.", "o'clock",
];
const PUNCTUATION = [".", ",", "!", "?", ";", ":", "...", " -", " --", "—", "(", ")", "\"", "'"];
const CONTRACTIONS = ["s", "t", "re", "ve", "m", "ll", "d"];
const CODE_LINES = [
  "int main(int argc, char** argv) {",
  "  return 0;",
  "}",
  "def encode(self, text: str) -> list[int]:",
  "    return [self.vocab[t] for t in text.split()]",
  "const x = arr.map((v, i) => v * i).filter(Boolean);",
  "for (size_t i = 0; i < n; ++i) sum += a[i] * b[i];",
  "if (!ok) { throw new Error(`bad ${value}`); }",
  "#include <vector>",
  "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
  "    x_0 = 0x7fffffff & ~mask; // comment",
  "\treturn std::move(result);",
  "<div class=\"row\"><span>{{ item }}</span></div>",
  "$ ls -la /usr/local/bin | grep -v '^d'",
  "a+=b;c-=d;e*=f;g/=h;i%=j;k<<=1;l>>=2;",
];
const CJK = [
  "你好，世界！", "我们今天去公园玩。", "量化模型在中央处理器上运行。", "こんにちは、世界。",
  "カタカナとひらがな", "東京は日本の首都です。", "안녕하세요 세계", "한국어 텍스트입니다.",
];
const OTHER_SCRIPTS = [
  "مرحبا بالعالم", "اللغة العربية جميلة.", "नमस्ते दुनिया", "हिन्दी में पाठ।", "Привет, мир!",
  "Γειά σου Κόσμε", "שלום עולם", "สวัสดีชาวโลก", "Xin chào thế giới",
];
const EMOJI = [
  "😀", "🎉", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏾‍💻", "🇺🇸", "🇯🇵", "1️⃣", "❤️", "🧑‍🤝‍🧑", "🐈‍⬛",
  "😶‍🌫️", "✌🏻", "🤷‍♀️",
];
const COMBINING = ["e\u0301", "a\u0308\u0323", "n\u0303", "o\u0328\u0301", "Z\u0351\u036b\u0343",
                   "i\u0307\u0301", "\u0915\u094d\u0937", "\u0627\u064e"];
const SPECIALS = [
  "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
  "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>", "<|reserved_special_token_5|>",
  "<|finetune_right_pad_id|>", "<|eot_id", "<|", "|>", "<|not_a_token|>",
];
const WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\u00a0",
                    "\u3000", "        ", "\n\n\n", " \t \n"];

function repeat(random, count, make) {
  const parts = [];
  for (let i = 0; i < count; ++i) parts.push(make());
  return parts;
}

function prose(random) {
  const words = repeat(random, 1 + random.int(20), () => {
    let word = random.pick(WORDS);
    if (random.chance(0.15)) word = word.toUpperCase();
    if (random.chance(0.1)) word += random.pick(PUNCTUATION);
    return word;
  });
  return words.join(" ") + random.pick([".", "!", "?", "", "\n"]);
}

function contraction(random) {
  const suffix = random.pick(CONTRACTIONS);
  const mixed = Array.from(suffix, (c) => (random.chance(0.5) ? c.toUpperCase() : c)).join("");
  const word = random.pick(["it", "IT", "They", "we", "I", "you", "She", "", "'"]);
  return `${word}'${mixed}` + (random.chance(0.5) ? ` ${random.pick(WORDS)}` : "");
}

function number(random) {
  const length = 1 + random.int(30);
  let digits = String(1 + random.int(9));
  while (digits.length < length) digits += String(random.int(10));
  const forms = [digits, `-${digits}`, `${digits}.${random.int(1000)}`, `v${digits}`,
                 `${digits}px`, `abc${digits}def`, `${digits} ${digits.slice(0, 3)}`,
                 digits.replace(/\B(?=(\d{3})+(?!\d))/g, ","), `١٢٣${digits}`, `${digits}%`];
  return random.pick(forms);
}

function whitespaceMix(random) {
  const parts = repeat(random, 1 + random.int(8), () =>
    random.chance(0.5) ? random.pick(WHITESPACE) : random.pick(WORDS));
  return parts.join("");
}

function code(random) {
  return repeat(random, 1 + random.int(5), () => {
    const indent = random.pick(["", "  ", "    ", "\t", "\t\t", "        "]);
    return indent + random.pick(CODE_LINES);
  }).join(random.pick(["\n", "\r\n", "\n\n"]));
}

function scripts(random, pool) {
  return repeat(random, 1 + random.int(4), () => random.pick(pool)).join(random.pick(["", " ", "\n"]));
}

function emoji(random) {
  return repeat(random, 1 + random.int(6), () =>
    random.chance(0.3) ? random.pick(WORDS) : random.pick(EMOJI)).join(random.pick(["", " "]));
}

function combining(random) {
  return repeat(random, 1 + random.int(5), () =>
    random.pick(COMBINING) + (random.chance(0.5) ? random.pick(WORDS) : "")).join(" ");
}

function withSpecials(random) {
  return repeat(random, 1 + random.int(5), () =>
    random.chance(0.5) ? random.pick(SPECIALS) : prose(random)).join(random.pick(["", " ", "\n"]));
}

// Random code points from every pool, to reach combinations the templates miss.
function mixed(random) {
  const pools = [WORDS, PUNCTUATION, CJK, OTHER_SCRIPTS, EMOJI, COMBINING, WHITESPACE, SPECIALS,
                 UNUSUAL];
  const text = repeat(random, 1 + random.int(12), () => random.pick(random.pick(pools))).join("");
  const chars = Array.from(text);  // Whole code points, so no surrogate pair is cut.
  return chars.slice(random.int(3), chars.length).join("");
}

// Code points where regex engines tend to disagree: Unicode spaces that are not ASCII, the
// byte order mark, zero-width and line separators, case-folding letters (long s, Kelvin sign),
// numerals that are not decimal digits, and characters outside the Basic Multilingual Plane.
const UNUSUAL = [0x85, 0xa0, 0x1680, 0x180e, 0x2000, 0x200b, 0x2028, 0x2029, 0x202f, 0x205f,
                 0x3000, 0xfeff, 0x17f, 0x212a, 0x0b, 0x0c, 0x1c, 0x1f, 0x300, 0x2160, 0xbd,
                 0xb2, 0x663, 0x1d7ce, 0x10400, 0xe000, 0x1f1e6].map((c) => String.fromCodePoint(c));

function unusual(random) {
  const c = random.pick(UNUSUAL);
  const forms = [c, `a${c}b`, ` ${c} `, `it'${c}`, `x${c}${c}  y`, `${c}\n`, `1${c}2`,
                 `${random.pick(WORDS)}${c}${random.pick(WORDS)}`];
  return random.pick(forms);
}

const GENERATORS = [prose, contraction, number, whitespaceMix, code,
                    (r) => scripts(r, CJK), (r) => scripts(r, OTHER_SCRIPTS), emoji, combining,
                    withSpecials, mixed, unusual];

// Returns `count` strings: fixed edge cases first, then generated ones in round-robin order.
function makeCorpus(count = 2400, seed = 20240418) {
  const random = makeRandom(seed);
  const corpus = [
    "", " ", "  ", "\n", "\t", "a", "Hello, world!", "Once upon a time",
    "x".repeat(1000), " ".repeat(300) + "end", "9".repeat(64), "\n".repeat(50),
    "'s's'S'll'LL'Ll'lL", "<|eot_id|><|eot_id|>", "<|begin_of_text|>Hello",
  ];
  for (let i = 0; corpus.length < count; ++i) {
    corpus.push(GENERATORS[i % GENERATORS.length](random));
  }
  return corpus;
}

module.exports = { makeCorpus };
