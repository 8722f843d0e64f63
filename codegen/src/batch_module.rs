//! The module of one lane-batched kernel: its prepared buffers, `prepare`, and the glue to the
//! runtime's `BatchKernel` around the step [`BatchGen`] renders.

use crate::batch::{BatchGen, EmbTable};
use crate::expand::KernelId;
use crate::module::Module;
use microgpt_model::{Precision, Program};
use proc_macro2::TokenStream;
use quote::quote;

type T = TokenStream;

/// The module of one lane-batched kernel: its state, `BatchKernel` impl and step.
pub fn batch_module(program: &Program, id: KernelId) -> T {
    let s = *program.shape();
    let t = id.target;
    let l = t.lanes();
    let isa = id.isa();
    let q = id.precision == Precision::Q412;
    let (vocab, e, block, layers) = (s.vocab, s.embd, s.block, s.layers);
    let cache = layers * block * e * l;
    let (precision, weights_ty, keys_ty, fill, words, logits_scale) = if q {
        (
            quote! { Q412 },
            quote! { i16 },
            quote! { i32 },
            quote! { ::microgpt_runtime::kernel::Aligned::from_slice(&quantized) },
            quote! { quantized.iter().map(|&v| v as i32).collect::<::std::vec::Vec<i32>>() },
            quote! { 1.0f32 },
        )
    } else {
        (
            quote! { F32 },
            quote! { f32 },
            quote! { f32 },
            // The output head divided by the temperature (the sampler reads logits / T), the
            // queries scaled for base-2 scores (see the attention op).
            quote! {
                ::microgpt_runtime::kernel::Aligned::from_slice(
                    &::microgpt_runtime::kernel::layout::folded_f32(weights, Some(settings.temperature), true),
                )
            },
            quote! { weights.data() },
            quote! { (1.0 / self.inv_temperature) },
        )
    };
    let emb_init = EmbTable::new(t, s).build(s, &keys_ty);
    // The Q4.12 words are quantised once, for both the weights and the embedding table.
    let prelude = q.then(|| quote! { let quantized = weights.quantized(); });
    let g = BatchGen::new(id, program);
    let (items, body) = g.render();
    let doc = format!(
        "The lane-batched {} kernel for {} ({isa}), shape {s}: {l} independent streams, one per \
         lane.",
        if q { "Q4.12" } else { "fp32" },
        t.slug()
    );
    let step_doc = format!(
        "One step of all {l} lanes, shape {s}.\n\n# Safety\n\nThe CPU supports {isa}; every token is \
         below VOCAB and every position below BLOCK, `maxpos` is their largest position; `k` was \
         built by `Kernel::prepare`."
    );
    let vi = t.vi();
    Module {
        id,
        doc,
        uses: quote! {},
        kernel_trait: quote! { BatchKernel },
        precision,
        consts: quote! { const LANES: usize = #l; },
        fields: quote! {
            weights: ::microgpt_runtime::kernel::Aligned<#weights_ty>,
            /// The embedding tables (see the embedding op for their order).
            emb: ::microgpt_runtime::kernel::Aligned<#keys_ty>,
            /// `[layer][ring slot][channel][lane]`.
            keys: ::microgpt_runtime::kernel::Aligned<#keys_ty>,
            values: ::microgpt_runtime::kernel::Aligned<f32>,
            /// `[id][lane]`.
            logits: ::microgpt_runtime::kernel::Aligned<f32>,
            /// The ring slot this step writes.
            slot: usize,
            inv_temperature: f32,
        },
        prelude: quote! { #prelude },
        inits: quote! {
            weights: #fill,
            emb: {
                let words = #words;
                let layout = weights.layout();
                #emb_init
            },
            keys: ::microgpt_runtime::kernel::Aligned::zeroed(#cache),
            values: ::microgpt_runtime::kernel::Aligned::zeroed(#cache),
            logits: ::microgpt_runtime::kernel::Aligned::zeroed(#vocab * #l),
            slot: 0,
            inv_temperature: 1.0 / settings.temperature,
        },
        methods: trait_methods(l, &logits_scale),
        step_doc,
        step_signature: quote! {
            batch_step(k: &mut Kernel, toks: &[u32; #l], pos: &[u32; #l], rs: &[f32; #l], maxpos: usize, next: &mut [u32; #l])
        },
        step_prelude: quote! {
            let slot = k.slot;
            let _: #vi;
        },
        body,
        items,
    }
    .into_tokens()
}

/// `BatchKernel`'s `step` (the lanes' inputs checked, then the generated step) and `logits`.
fn trait_methods(l: usize, logits_scale: &T) -> T {
    quote! {
        fn step(&mut self, toks: &[u32], pos: &[u32], rs: &[f32], next: &mut [u32]) {
            let toks: &[u32; #l] = toks.try_into().expect("one token per lane");
            let pos: &[u32; #l] = pos.try_into().expect("one position per lane");
            let r: &[f32; #l] = rs.try_into().expect("one draw per lane");
            let next: &mut [u32; #l] = next.try_into().expect("one output per lane");
            // Folds without branches, so that they vectorise.
            let maxtok = toks.iter().fold(0, |a, &b| a.max(b)) as usize;
            let maxpos = pos.iter().fold(0, |a, &b| a.max(b)) as usize;
            assert!(maxtok < VOCAB && maxpos < BLOCK, "token {maxtok} or position {maxpos} out of range");
            // SAFETY: `prepare` checked the CPU features and sized every buffer for the
            // generated offsets; tokens and positions were just checked.
            unsafe { batch_step(self, toks, pos, r, maxpos, next) };
            self.slot = (self.slot + 1) % BLOCK;
        }

        fn logits(&self, lane: usize) -> ::std::vec::Vec<f32> {
            (0..VOCAB).map(|i| self.logits.as_slice()[i * #l + lane] * #logits_scale).collect()
        }
    }
}
