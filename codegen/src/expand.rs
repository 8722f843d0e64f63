//! Assembles the generated module: shape constants, one submodule per kernel, the registry list.

use crate::batch_module::batch_module;
use crate::f32::F32Gen;
use crate::module::Module;
use crate::q412::Q412Gen;
use crate::target::Target;
use crate::valid::Spec;
use microgpt_model::plan::{Arrangement, WeightPlan};
use microgpt_model::{Precision, Program, Shape};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

type T = TokenStream;

/// One generated kernel: target, precision, and whether a table replaces the history-free
/// prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelId {
    pub target: Target,
    pub precision: Precision,
    pub table: bool,
    /// One stream per lane (lane-batched) rather than one stream per kernel.
    pub batch: bool,
}

/// The targets lane-batched kernels are generated for.
pub const BATCH_TARGETS: [Target; 3] = [Target::Avx2, Target::Avx512, Target::Neon];

impl KernelId {
    /// Every kernel the macro generates for a shape.
    pub fn all() -> Vec<KernelId> {
        let mut out = Vec::new();
        for precision in Precision::KERNELS {
            for table in [false, true] {
                for target in Target::ALL {
                    out.push(KernelId {
                        target,
                        precision,
                        table,
                        batch: false,
                    });
                }
            }
            for target in BATCH_TARGETS {
                out.push(KernelId {
                    target,
                    precision,
                    table: false,
                    batch: true,
                });
            }
        }
        out
    }

    /// Module name, e.g. `avx512_f32_table`, `avx512_f32_x16`.
    pub fn module(self) -> Ident {
        format_ident!("{}", self.variant_name().replace(['-', '.'], "_"))
    }

    /// Registry name, e.g. `avx512-f32-table`, `avx512-q4.12-x16` (16 streams in the lanes).
    pub fn variant_name(self) -> String {
        let kind = self.precision.slug();
        let table = if self.table { "-table" } else { "" };
        let batch = if self.batch {
            format!("-x{}", self.target.lanes())
        } else {
            String::new()
        };
        format!("{}-{kind}{table}{batch}", self.target.slug())
    }

    /// The ISA label shown in the bench table.
    pub fn isa(self) -> String {
        match (self.target, self.precision) {
            (Target::Scalar, _) => "scalar".into(),
            (Target::Sse, _) => "sse4.1+fma".into(),
            (Target::Avx2, _) => "avx2+fma".into(),
            (Target::Avx512, _) => self.precision.pick("avx512f", "avx512-vnni").into(),
            (Target::Neon, _) => "neon".into(),
        }
    }

    pub fn vnni(self) -> bool {
        self.precision == Precision::Q412 && self.target == Target::Avx512
    }

    /// Whether the registry also runs this kernel on every core (the batches, and the fp32 table
    /// kernels as the best single-stream ones).
    fn threaded(self) -> bool {
        self.batch || (self.table && self.precision == Precision::F32 && self.target != Target::Scalar)
    }
}

/// The whole module for a `kernels!` invocation.
pub fn expand(spec: &Spec) -> T {
    expand_only(spec, |_| true)
}

/// The module with only the kernels `keep` selects (the inspect example prints one target).
pub fn expand_only(spec: &Spec, keep: impl Fn(KernelId) -> bool) -> T {
    let name = &spec.name;
    let s = spec.shape;
    let program = Program::forward(s);
    let (vocab, block, embd, heads, layers, mlp) = (s.vocab, s.block, s.embd, s.heads, s.layers, s.mlp);
    let kernels: Vec<KernelId> = KernelId::all().into_iter().filter(|&id| keep(id)).collect();
    let modules: Vec<T> = kernels
        .iter()
        .map(|&id| {
            if id.batch {
                batch_module(&program, id)
            } else {
                kernel_module(&program, id)
            }
        })
        .collect();
    let specs: Vec<T> = kernels
        .iter()
        .map(|&id| {
            let m = id.module();
            let cfg = cfg_attr(id.target);
            let name = id.variant_name();
            let precision = id.precision.pick(quote! { F32 }, quote! { Q412 });
            let (single, copy) = if id.batch {
                (
                    quote! { ::microgpt_runtime::kernel::batch_spec::<#m::Kernel>() },
                    quote! {
                        ::microgpt_runtime::kernel::BatchVariant::<#m::Kernel>::new(w, s)
                            .map(|v| Box::new(v.with_first_stream(i * <#m::Kernel as ::microgpt_runtime::kernel::BatchKernel>::LANES)) as Box<dyn ::microgpt_runtime::Variant>)
                    },
                )
            } else {
                (
                    quote! { ::microgpt_runtime::kernel::kernel_spec::<#m::Kernel>() },
                    quote! {
                        ::microgpt_runtime::kernel::KernelVariant::<#m::Kernel>::new(w, s)
                            .map(|v| Box::new(v.with_stream(i)) as Box<dyn ::microgpt_runtime::Variant>)
                    },
                )
            };
            let threaded = id.threaded().then(|| {
                quote! {
                    #cfg list.push(::microgpt_runtime::threads::threaded_spec(
                        #name, "proc-macro", ::microgpt_runtime::Precision::#precision, Some(SHAPE),
                        |w, s, i| #copy,
                    ));
                }
            });
            quote! {
                #cfg list.push(#single);
                #threaded
            }
        })
        .collect();
    let doc = format!(
        "Kernels generated by `kernels!` for shape {s} ({} parameters, {} weight MACs per token).\n\n\
         Each submodule is one kernel: fp32 and Q4.12, for the portable scalar fallback, AVX2+FMA, \
         AVX-512 and NEON, each also in a `_table` form that starts from a prepare-time table of the \
         history-free prefix. The forward pass they render:\n\n```text\n{}```",
        s.param_count(),
        s.weight_macs(),
        program.listing()
    );
    quote! {
        #[doc = #doc]
        #[allow(clippy::all, unused_unsafe, unused_variables, unused_mut, non_snake_case)]
        pub mod #name {
            /// Token ids (BOS = VOCAB - 1).
            pub const VOCAB: usize = #vocab;
            /// Context length.
            pub const BLOCK: usize = #block;
            /// Model width.
            pub const EMBD: usize = #embd;
            /// Attention heads.
            pub const HEADS: usize = #heads;
            /// Transformer blocks.
            pub const LAYERS: usize = #layers;
            /// MLP hidden width.
            pub const MLP: usize = #mlp;
            /// The shape every kernel here is generated for.
            pub const SHAPE: ::microgpt_model::Shape = ::microgpt_model::Shape {
                vocab: VOCAB, block: BLOCK, embd: EMBD, heads: HEADS, layers: LAYERS, mlp: MLP,
            };

            #(#modules)*

            /// Registry entries for every kernel of this shape that this architecture compiles.
            pub fn variants() -> ::std::vec::Vec<::microgpt_runtime::VariantSpec> {
                let mut list = ::std::vec::Vec::new();
                #(#specs)*
                list
            }
        }
    }
}

/// `prepare`'s checks of the CPU features kernel `id` needs, each returning an error that names
/// the variant and the missing feature.
pub fn feature_checks(id: KernelId) -> Vec<T> {
    let name = id.variant_name();
    id.target
        .features(id.vnni())
        .iter()
        .map(|f| {
            quote! {
                if !::std::is_x86_feature_detected!(#f) {
                    return Err(::microgpt_runtime::PrepareError::MissingFeature {
                        kernel: #name.into(),
                        feature: #f,
                    });
                }
            }
        })
        .collect()
}

/// The module's `#[cfg]`: its architecture (none for scalar code).
pub fn cfg_attr(t: Target) -> T {
    match t.arch() {
        Some(arch) => quote! { #[cfg(target_arch = #arch)] },
        None => quote! {},
    }
}

/// The prepare-time code that fills the prepared buffer from the parameters `source` (the
/// canonical order; for fp32, already folded).
fn fill_weights(plan: &WeightPlan, elem: T, source: T) -> T {
    let total = plan.total;
    let fills: Vec<T> = plan
        .placed
        .iter()
        .map(|p| {
            let (src, rows, cols, off, len) = (p.source, p.rows, p.cols, p.offset, p.len);
            let arranged = match p.arrangement {
                Arrangement::Rows { cols_pad } => quote! { layout::rows(src, #rows, #cols, #cols_pad) },
                Arrangement::Columns { rows_pad } => {
                    quote! { layout::columns(src, #rows, #cols, #rows_pad) }
                }
                Arrangement::ColumnPairs { rows_pad } => {
                    quote! { layout::column_pairs(src, #rows, #cols, #rows_pad) }
                }
            };
            quote! {
                let src = &#source[#src..#src + #rows * #cols];
                buf[#off..#off + #len].copy_from_slice(&#arranged);
            }
        })
        .collect();
    quote! {{
        let mut buf = ::std::vec![<#elem>::default(); #total];
        #(#fills)*
        ::microgpt_runtime::kernel::Aligned::from_slice(&buf)
    }}
}

fn kernel_module(program: &Program, id: KernelId) -> T {
    let s: Shape = *program.shape();
    let t = id.target;
    let isa = id.isa();
    let lanes = t.lanes();
    let epad = s.embd.next_multiple_of(lanes);
    let vpad = s.vocab.next_multiple_of(lanes);
    let cache = s.layers * s.block * epad;
    // What differs between the precisions: the generated code, the element types of the
    // prepared buffers, and how the prepare step fills them.
    let (precision, items, body, elem, cache_elem, fill, table) = match id.precision {
        Precision::F32 => {
            let g = F32Gen::new(t, program, id.table);
            let fill = fill_weights(&g.f.plan, quote! { f32 }, quote! { folded });
            let row = g.f.table_row();
            let (items, body) = g.render();
            let table = quote! { layout::prefix_table_f32(weights, #lanes) };
            (
                quote! { F32 },
                items,
                body,
                quote! { f32 },
                quote! { f32 },
                fill,
                (table, row * 4),
            )
        }
        Precision::Q412 => {
            let g = Q412Gen::new(t, program, id.table, id.vnni());
            let fill = fill_weights(&g.f.plan, quote! { i16 }, quote! { quantized });
            let row = g.f.table_row();
            let (items, body) = g.render();
            let table = quote! { layout::prefix_table_q412(weights, #lanes) };
            (
                quote! { Q412 },
                items,
                body,
                quote! { i16 },
                quote! { i32 },
                fill,
                (table, row * 2),
            )
        }
        other => panic!("no kernel is generated in {other}"),
    };
    let (table_expr, row_bytes) = table;
    let prelude = id.precision.pick(
        // The output head divided by the temperature: the logits come out as logits / T.
        quote! { let folded = layout::folded_f32(weights, Some(settings.temperature), false); },
        quote! { let quantized = weights.quantized(); },
    );
    let logits_out = id.precision.pick(
        // The fp32 kernels keep logits / T (the temperature is folded into the output head).
        quote! { self.logits[..VOCAB].iter().map(|z| z / self.inv_temperature).collect() },
        quote! { self.logits[..VOCAB].to_vec() },
    );
    let table_field = id
        .table
        .then(|| quote! { table: ::microgpt_runtime::kernel::Aligned<#elem>, });
    let table_init = id
        .table
        .then(|| quote! { table: ::microgpt_runtime::kernel::Aligned::from_slice(&#table_expr), });
    let notes = id.table.then(|| {
        let kb = (s.vocab * s.block * row_bytes).div_ceil(1024);
        let note = format!(
            "everything before layer 0's attention is precomputed per (token, position) at prepare time ({kb} KB table)"
        );
        quote! {
            fn notes() -> ::std::vec::Vec<::std::string::String> {
                ::std::vec![#note.to_string()]
            }
        }
    });
    let kind_doc = id.precision;
    let doc = format!(
        "The {kind_doc} kernel for {} ({isa}), shape {s}{}.",
        t.slug(),
        if id.table {
            ", starting from a prepare-time table of the history-free prefix"
        } else {
            ""
        }
    );
    let step_doc = format!(
        "One token, fully unrolled for shape {s}: the forward pass for `tok` at `pos`, then the \
         sampler with the uniform `r`. Returns the drawn token.\n\n# Safety\n\nThe CPU supports \
         {isa}; `tok < VOCAB`, `pos < BLOCK`; `k` was built by `Kernel::prepare`."
    );
    Module {
        id,
        doc,
        uses: quote! { use ::microgpt_runtime::kernel::layout; },
        kernel_trait: quote! { Kernel },
        precision,
        consts: quote! {},
        fields: quote! {
            weights: ::microgpt_runtime::kernel::Aligned<#elem>,
            #table_field
            keys: ::microgpt_runtime::kernel::Aligned<#cache_elem>,
            values: ::microgpt_runtime::kernel::Aligned<f32>,
            logits: [f32; #vpad],
            inv_temperature: f32,
        },
        prelude,
        inits: quote! {
            weights: #fill,
            #table_init
            keys: ::microgpt_runtime::kernel::Aligned::zeroed(#cache),
            values: ::microgpt_runtime::kernel::Aligned::zeroed(#cache),
            logits: [0.0; #vpad],
            inv_temperature: 1.0 / settings.temperature,
        },
        methods: quote! {
            fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize {
                assert!(tok < VOCAB && pos < BLOCK, "token {tok} or position {pos} out of range");
                // SAFETY: `prepare` checked the CPU features and built every buffer with the
                // sizes the generated offsets assume; `tok` and `pos` were just checked.
                unsafe { token_step(self, tok, pos, r) }
            }

            fn logits(&self) -> ::std::vec::Vec<f32> {
                #logits_out
            }

            #notes
        },
        step_doc,
        step_signature: quote! { token_step(k: &mut Kernel, tok: usize, pos: usize, r: f32) -> usize },
        step_prelude: quote! {},
        body,
        items,
    }
    .into_tokens()
}
