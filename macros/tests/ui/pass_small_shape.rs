// A small valid shape generates a module with its constants and registry entries.
microgpt_macros::kernels! { name: tiny, vocab: 5, block: 4, embd: 8, heads: 2, layers: 1, mlp: 8 }

fn main() {
    assert_eq!(tiny::SHAPE.param_count(), 5 * 8 * 2 + 4 * 8 + 4 * 64 + 2 * 64);
    assert!(!tiny::variants().is_empty());
}
