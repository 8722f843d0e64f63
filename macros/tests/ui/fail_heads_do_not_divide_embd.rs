microgpt_macros::kernels! { name: m, vocab: 27, block: 16, embd: 18, heads: 4, layers: 1, mlp: 64 }

fn main() {}
