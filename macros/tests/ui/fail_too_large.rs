microgpt_macros::kernels! { name: m, vocab: 27, block: 16, embd: 256, heads: 4, layers: 2, mlp: 1024 }

fn main() {}
