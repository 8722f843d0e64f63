//! The skeleton every generated kernel module shares: the module and its imports, the `Kernel`
//! state, the runtime trait's constants and `prepare` (CPU features, then the shape, then the
//! prepared buffers), and the unsafe step around the rendered body and op functions. The
//! single-stream and lane-batched modules fill in what differs ([`Module`]).

use crate::expand::{KernelId, cfg_attr, feature_checks};
use proc_macro2::TokenStream;
use quote::quote;

type T = TokenStream;

/// What one kernel module holds besides the shared skeleton.
pub struct Module {
    pub id: KernelId,
    /// The module's and the state's doc.
    pub doc: String,
    /// Items used after the target's imports.
    pub uses: T,
    /// The runtime trait implemented (`Kernel`, `BatchKernel`).
    pub kernel_trait: T,
    /// The `Precision` variant.
    pub precision: T,
    /// The trait's constants after `NAME`, `ISA`, `PRECISION` and `BACKEND`.
    pub consts: T,
    /// The state's fields.
    pub fields: T,
    /// Statements of `prepare` after the checks, before the state is built.
    pub prelude: T,
    /// The state's field initialisers.
    pub inits: T,
    /// The trait's methods after `shape` and `prepare`.
    pub methods: T,
    pub step_doc: String,
    /// The step function's name, parameters after `k: &mut Kernel`, and return type.
    pub step_signature: T,
    /// Statements of the step after the weight and cache pointers, before the body.
    pub step_prelude: T,
    pub body: T,
    pub items: Vec<T>,
}

impl Module {
    pub fn into_tokens(self) -> T {
        let Module {
            id,
            doc,
            uses,
            kernel_trait,
            precision,
            consts,
            fields,
            prelude,
            inits,
            methods,
            step_doc,
            step_signature,
            step_prelude,
            body,
            items,
        } = self;
        let t = id.target;
        let (module, cfg, imports) = (id.module(), cfg_attr(t), t.imports());
        let attrs = t.fn_attrs(id.vnni());
        let (name, isa) = (id.variant_name(), id.isa());
        let checks = feature_checks(id);
        quote! {
            #[doc = #doc]
            #cfg
            pub mod #module {
                use super::*;
                #imports
                #uses

                #[doc = #doc]
                pub struct Kernel {
                    #fields
                }

                impl ::microgpt_runtime::kernel::#kernel_trait for Kernel {
                    const NAME: &'static str = #name;
                    const ISA: &'static str = #isa;
                    const PRECISION: ::microgpt_runtime::Precision = ::microgpt_runtime::Precision::#precision;
                    const BACKEND: &'static str = "proc-macro";
                    #consts

                    fn shape() -> ::microgpt_model::Shape {
                        SHAPE
                    }

                    fn prepare(
                        weights: &::microgpt_weights::Weights,
                        settings: &::microgpt_runtime::Settings,
                    ) -> ::std::result::Result<Self, ::microgpt_runtime::PrepareError> {
                        #(#checks)*
                        ::microgpt_runtime::kernel::check_shape(#name, weights, SHAPE)?;
                        #prelude
                        Ok(Kernel {
                            #inits
                        })
                    }

                    #methods
                }

                #[doc = #step_doc]
                #attrs
                unsafe fn #step_signature {
                    let w = k.weights.as_ptr();
                    let keys = k.keys.as_mut_ptr();
                    let values = k.values.as_mut_ptr();
                    #step_prelude
                    #body
                }

                #(#items)*
            }
        }
    }
}
