//! The model's op list rendered to Cranelift IR at run time, for any shape (up to [`MAX_MACS`]
//! weight MACs a token) and any weights.
//!
//! [`compile`] renders one function per token step (the whole forward pass and the sampler,
//! unrolled over the shape, with 128-bit vectors), compiles it for this CPU with
//! `cranelift-native`'s flags, and returns a [`Jit`]: a safe handle that owns the code and the
//! state block (prepared weights, KV cache, scratch, logits) and runs steps. Every Cranelift
//! failure (unsupported host, verifier, module) comes back as a [`JitError`].

mod attn;
mod cl;
mod fp32;
mod q412;
mod state;
mod variant;

pub use microgpt_model::Precision;
pub use variant::{JitVariant, variants};

use cl::Cl;
use cranelift_codegen::ir::types::{F32, I32, I64};
use cranelift_codegen::ir::{AbiParam, InstBuilder, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};
use microgpt_model::Program;
use microgpt_runtime::Settings;
use microgpt_runtime::kernel::Aligned;
use microgpt_weights::Weights;
use microgpt_weights::folded_f32;
use state::StateLayout;
use std::fmt;
use std::time::Instant;

/// Why compiling failed.
#[derive(Debug)]
pub enum JitError {
    /// This CPU is not one Cranelift generates code for.
    Host(String),
    /// An invalid setting (a bug in this crate).
    Settings(String),
    /// Cranelift refused the function (the verifier's report, or a code generation error).
    Codegen(String),
    /// Defining or finalising the function in the JIT module failed.
    Module(String),
    /// The shape's step has more weight MACs than [`MAX_MACS`].
    TooLarge { macs: usize },
    /// A precision the JIT does not render (it renders [`Precision::KERNELS`]).
    Precision(Precision),
}

/// The most weight MACs per token the JIT compiles: it unrolls every matvec, so compile time and
/// memory grow with the MACs.
pub const MAX_MACS: usize = 1 << 22;

impl fmt::Display for JitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JitError::Host(e) => write!(f, "cranelift does not support this host: {e}"),
            JitError::Settings(e) => write!(f, "cranelift settings: {e}"),
            JitError::Codegen(e) => write!(f, "cranelift could not compile the step: {e}"),
            JitError::Module(e) => write!(f, "cranelift module: {e}"),
            JitError::Precision(p) => write!(f, "the JIT renders fp32 and Q4.12, not {p}"),
            JitError::TooLarge { macs } => write!(
                f,
                "the step has {macs} weight MACs; the JIT unrolls its matvecs and compiles at most {MAX_MACS}"
            ),
        }
    }
}

impl std::error::Error for JitError {}

/// How to compile.
#[derive(Clone, Copy, Debug)]
pub struct JitOptions {
    pub precision: Precision,
    /// Run Cranelift's IR verifier (on in tests).
    pub verify: bool,
    /// Compile as if the CPU had no FMA, so fused multiply-adds become calls to `fmaf` (x86
    /// only; tests use it to exercise the library call).
    pub without_fma: bool,
    /// Keep the machine code listing (for the inspect example).
    pub disassemble: bool,
    /// Keep the CLIF text (for the inspect example and tests).
    pub clif: bool,
}

impl JitOptions {
    pub fn new(precision: Precision) -> JitOptions {
        JitOptions {
            precision,
            verify: cfg!(debug_assertions),
            without_fma: false,
            disassemble: false,
            clif: false,
        }
    }
}

/// The step's signature: `(state, token, position, r) -> next token`.
type StepFn = unsafe extern "C" fn(*mut u8, i32, i32, f32) -> i32;

/// `fmaf`, for Cranelift's fused multiply-add library call on CPUs without FMA.
extern "C" fn fmaf(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// A compiled step and the state it works on.
pub struct Jit {
    module: Option<JITModule>,
    step: StepFn,
    state: Aligned<u8>,
    layout: StateLayout,
    temperature: f32,
    clif: Option<String>,
    asm: Option<String>,
    compile_ms: f64,
}

// SAFETY: the JIT module holds the compiled code and its own bookkeeping; nothing in it is tied
// to the thread that created it, and a `Jit` is only ever used through `&mut self`.
unsafe impl Send for Jit {}

impl Drop for Jit {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the only pointer into the module's memory is `self.step`, which dies with
            // `self`.
            unsafe { module.free_memory() };
        }
    }
}

/// Renders and compiles the step for `weights` (any valid shape of at most [`MAX_MACS`] weight
/// MACs).
pub fn compile(weights: &Weights, settings: &Settings, options: &JitOptions) -> Result<Jit, JitError> {
    let start = Instant::now();
    if !Precision::KERNELS.contains(&options.precision) {
        return Err(JitError::Precision(options.precision));
    }
    let macs = weights.shape().weight_macs();
    if macs > MAX_MACS {
        return Err(JitError::TooLarge { macs });
    }
    let program = Program::forward(*weights.shape());
    let layout = StateLayout::new(&program, options.precision);

    let isa = host_isa(options)?;
    let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
    builder.symbol("fmaf", fmaf as *const u8);
    let mut module = JITModule::new(builder);

    let mut ctx = module.make_context();
    ctx.func.signature.params.extend([
        AbiParam::new(I64),
        AbiParam::new(I32),
        AbiParam::new(I32),
        AbiParam::new(F32),
    ]);
    ctx.func.signature.returns.push(AbiParam::new(I32));
    ctx.func.name = UserFuncName::user(0, 0);
    let id = module
        .declare_function("microgpt_step", Linkage::Local, &ctx.func.signature)
        .map_err(|e| JitError::Module(e.to_string()))?;
    render_step(
        &mut ctx.func,
        &module,
        &program,
        &layout,
        options.precision,
        settings.temperature,
    );
    let clif = options.clif.then(|| ctx.func.display().to_string());
    ctx.set_disasm(options.disassemble);
    module
        .define_function(id, &mut ctx)
        .map_err(|e| JitError::Codegen(format!("{e:?}")))?;
    let asm = ctx.compiled_code().and_then(|c| c.vcode.clone());
    module.clear_context(&mut ctx);
    module
        .finalize_definitions()
        .map_err(|e| JitError::Module(e.to_string()))?;
    let code = module.get_finalized_function(id);
    // SAFETY: the function was built with exactly this signature, in this process's calling
    // convention (`module.make_context` uses the ISA's default).
    let step: StepFn = unsafe { std::mem::transmute::<*const u8, StepFn>(code) };

    let state = build_state(weights, &layout, settings.temperature);
    Ok(Jit {
        module: Some(module),
        step,
        state,
        layout,
        temperature: settings.temperature,
        clif,
        asm,
        compile_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// The compiler for this CPU: Cranelift without its optimiser (the rendered code is already what
/// should run), FMA off when `options.without_fma` asks for it.
fn host_isa(options: &JitOptions) -> Result<cranelift_codegen::isa::OwnedTargetIsa, JitError> {
    let mut flags = settings::builder();
    let set = |flags: &mut settings::Builder, k: &str, v: &str| {
        flags
            .set(k, v)
            .map_err(|e| JitError::Settings(format!("{k}={v}: {e}")))
    };
    set(&mut flags, "opt_level", "none")?;
    set(
        &mut flags,
        "enable_verifier",
        if options.verify { "true" } else { "false" },
    )?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    let mut isa = cranelift_native::builder().map_err(|e| JitError::Host(e.to_string()))?;
    if options.without_fma && cfg!(target_arch = "x86_64") {
        isa.set("has_fma", "false")
            .map_err(|e| JitError::Settings(e.to_string()))?;
    }
    let isa = isa
        .finish(settings::Flags::new(flags))
        .map_err(|e| JitError::Host(e.to_string()))?;
    Ok(isa)
}

/// Renders the step into `func`: `(state, tok, pos, r) -> next`, the op list then the draw.
fn render_step(
    func: &mut cranelift_codegen::ir::Function,
    module: &JITModule,
    program: &Program,
    layout: &StateLayout,
    precision: Precision,
    temperature: f32,
) {
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params = b.block_params(entry).to_vec();
    let p = fp32::Params {
        base: params[0],
        tok: params[1],
        pos: params[2],
        r: params[3],
    };
    let mut cl = Cl::new(b);
    let next = if precision == Precision::Q412 {
        q412::render(&mut cl, program, layout, &p, 1.0 / temperature)
    } else {
        fp32::render(&mut cl, program, layout, &p)
    };
    cl.b.ins().return_(&[next]);
    cl.b.seal_all_blocks();
    cl.b.finalize(module.isa().frontend_config());
}

/// The state block: prepared weights (fp32: the output head divided by the temperature), zeros
/// elsewhere.
fn build_state(weights: &Weights, layout: &StateLayout, temperature: f32) -> Aligned<u8> {
    let mut state = Aligned::<u8>::zeroed(layout.total);
    let bytes: Vec<u8> = if layout.precision == Precision::Q412 {
        let quantized = layout.plan.arrange(&weights.quantized());
        quantized.iter().flat_map(|v| v.to_le_bytes()).collect()
    } else {
        let folded = layout
            .plan
            .arrange(&folded_f32(weights, Some(temperature), false));
        folded.iter().flat_map(|v| v.to_le_bytes()).collect()
    };
    state.as_mut_slice()[..bytes.len()].copy_from_slice(&bytes);
    state
}

impl Jit {
    /// One step: the forward pass for `tok` at `pos` (positions `0..pos` cached), then a draw
    /// with the uniform `r`.
    ///
    /// # Panics
    /// If `tok` or `pos` is out of range for the shape.
    pub fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize {
        let s = self.layout.shape;
        assert!(
            tok < s.vocab && pos < s.block,
            "token {tok} or position {pos} out of range"
        );
        // SAFETY: `step` was compiled for this state's layout; the state block is ours, sized
        // `layout.total`, and every offset the code uses lies inside it for `tok < vocab` and
        // `pos < block`, just checked.
        unsafe { (self.step)(self.state.as_mut_ptr(), tok as i32, pos as i32, r) as usize }
    }

    /// The logits of the last step.
    pub fn logits(&self) -> Vec<f32> {
        let off = self.layout.logits;
        let bytes = &self.state.as_slice()[off..off + 4 * self.layout.shape.vocab];
        // The fp32 code keeps logits / T.
        let scale = self.layout.precision.pick(self.temperature, 1.0);
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * scale)
            .collect()
    }

    /// The CLIF of the step, as rendered (before Cranelift's optimisations), when compiled with
    /// `clif`; each instruction's `@nnnn` location is the index of the op it renders.
    pub fn clif(&self) -> Option<&str> {
        self.clif.as_deref()
    }

    /// The machine code listing, when compiled with `disassemble`.
    pub fn asm(&self) -> Option<&str> {
        self.asm.as_deref()
    }

    /// Wall time of rendering, compiling and preparing, in milliseconds.
    pub fn compile_ms(&self) -> f64 {
        self.compile_ms
    }

    pub fn shape(&self) -> microgpt_model::Shape {
        self.layout.shape
    }

    pub fn precision(&self) -> Precision {
        self.layout.precision
    }
}
