//! TALOS-V2, emulated bit for bit: the model's op list rendered with the FPGA's integer datapath
//! (integer RMS scale, LUT exponential, truncating divider), its sampler with every wrap-around,
//! its generation loop and its cycle count.
//!
//! "The FPGA" here means the HEAD RTL of TALOS-V2 as simulated; the board numbers its README
//! quotes came from an older build with a different sampler.

pub mod arith;
mod board;
mod variant;

pub use board::Sample;
pub use variant::TalosVariant;

use arith::{adds, divs, expa, mulq, rms_scale, sample_weight, sat16, tshift};
use microgpt_model::{Buffer, Layout, Op, Param, Program, Shape};
use microgpt_runtime::VariantSpec;
use microgpt_runtime::reference::{Buffers, pair};
use microgpt_weights::Weights;
use std::fmt;

/// The FPGA's clock: 50 MHz × 9/8.
pub const CLOCK_HZ: f64 = 56_250_000.0;
/// TALOS-V2's published throughput at [`CLOCK_HZ`], tokens a second: the baseline the bench's
/// "x FPGA" column divides by.
pub const CLAIMED_TOK_PER_S: f64 = 53_000.0;
/// The multiplier the RTL sampler applies to the RNG state before taking its top 24 bits.
pub const SAMPLER_MIX: u32 = 0x0001_49FB;

/// The registry entry: the emulator as the `talos` bench row.
pub fn variants() -> Vec<VariantSpec> {
    vec![VariantSpec::new(
        "talos",
        "emulator",
        microgpt_model::Precision::Integer,
        |w, s| Ok(Box::new(TalosVariant::new(w, s)?)),
    )]
}

/// Why the emulator refused an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TalosError {
    /// TALOS-V2 is built for the default shape only.
    Shape(Shape),
    /// A token id the ROMs have no row for (the RTL would read undefined memory).
    Token(usize),
    /// A position the ROMs have no row for.
    Position(usize),
    /// The board's `max_gen` must be 1..=15.
    MaxGen(usize),
}

impl fmt::Display for TalosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TalosError::Shape(s) => write!(
                f,
                "TALOS-V2 is built for shape {}; these weights have {s}",
                Shape::DEFAULT
            ),
            TalosError::Token(t) => write!(f, "token {t} is out of range (TALOS-V2 has tokens 0..=26)"),
            TalosError::Position(p) => {
                write!(f, "position {p} is out of range (TALOS-V2 has positions 0..=15)")
            }
            TalosError::MaxGen(n) => write!(f, "max_gen {n} is out of range (the board takes 1..=15)"),
        }
    }
}

impl std::error::Error for TalosError {}

/// The inputs of one core step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepInput {
    pub token: usize,
    pub pos: usize,
    /// Zero the KV cache first.
    pub clear: bool,
    /// The RNG state before the step.
    pub rng: u32,
    /// Temperature as Q8.8 (128 = T 0.5).
    pub theta: u16,
    /// Sample (and advance the RNG); otherwise direct mode: the argmax, RNG unchanged.
    pub sample: bool,
}

/// The outputs of one core step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOutput {
    pub next: usize,
    pub rng: u32,
    pub top: i16,
    pub argmax: usize,
    /// Core-clock cycles of this step as the board's `perf_cycles` counts them.
    pub cycles: u32,
}

/// Everything a step computed, for comparison with the RTL simulation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The buffer each op wrote, after the op: (op index, buffer, values).
    pub ops: Vec<(usize, Buffer, Vec<i16>)>,
    /// Every RMS scale, in order.
    pub rms_scales: Vec<i16>,
    /// Sampler weights, their u32 sum and the cut (sampling steps only).
    pub weights: Vec<u32>,
    pub weight_sum: u32,
    pub cut: u32,
}

/// The emulated core: ROMs, KV cache, activation buffers.
#[derive(Clone, Debug)]
pub struct Talos {
    program: Program,
    layout: Layout,
    rom: Vec<i16>,
    /// Each matrix as columns (`[col][row]`) of f64. A product of two i16 (|p| ≤ 2^30) and any
    /// sum of up to 2^22 of them are integers below 2^53, so f64 holds them exactly: the matvecs
    /// are exact whatever the order, and they vectorise.
    columns: Vec<Vec<f64>>,
    buffers: Buffers<i16>,
    keys: Vec<i16>,
    values: Vec<i16>,
    /// Whether this CPU runs the AVX2 build of the step (always false off x86-64).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    avx2: bool,
}

impl Talos {
    /// Loads the ROMs: the weights rounded to Q4.12 (exact for ROM and Q4.12 files).
    pub fn new(weights: &Weights) -> Result<Talos, TalosError> {
        let shape = *weights.shape();
        if shape != Shape::DEFAULT {
            return Err(TalosError::Shape(shape));
        }
        let cache = shape.layers * shape.block * shape.embd;
        let layout = Layout::new(shape);
        let rom = weights.quantized();
        let columns = layout
            .tensors()
            .iter()
            .map(|t| {
                let w = &rom[t.range()];
                let mut c = vec![0.0; t.len()];
                for r in 0..t.rows {
                    for k in 0..t.cols {
                        c[k * t.rows + r] = w[r * t.cols + k] as f64;
                    }
                }
                c
            })
            .collect();
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        Ok(Talos {
            program: Program::forward(shape),
            layout,
            rom,
            columns,
            buffers: Buffer::ALL.map(|b| vec![0; b.len(&shape)]),
            keys: vec![0; cache],
            values: vec![0; cache],
            avx2,
        })
    }

    /// The same emulator, running the portable build of the step even where the CPU has AVX2
    /// (the two builds must give the same integers; the property tests compare them).
    pub fn portable(mut self) -> Talos {
        self.avx2 = false;
        self
    }

    /// The logits of the last step (Q4.12).
    pub fn logits(&self) -> &[i16] {
        &self.buffers[Buffer::Logits.index()]
    }

    /// One core step.
    pub fn step(&mut self, input: StepInput) -> Result<StepOutput, TalosError> {
        self.dispatch(input, None)
    }

    /// One core step, recording every intermediate.
    pub fn step_traced(&mut self, input: StepInput, trace: &mut Trace) -> Result<StepOutput, TalosError> {
        self.dispatch(input, Some(trace))
    }

    fn dispatch(&mut self, input: StepInput, trace: Option<&mut Trace>) -> Result<StepOutput, TalosError> {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` was set only after detecting AVX2 and FMA on this CPU.
            return unsafe { self.run_step_avx2(input, trace) };
        }
        self.run_step(input, trace)
    }

    /// The same code, compiled for AVX2 (integer arithmetic, so the results are identical).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_step_avx2(
        &mut self,
        input: StepInput,
        trace: Option<&mut Trace>,
    ) -> Result<StepOutput, TalosError> {
        self.run_step(input, trace)
    }

    #[inline(always)]
    fn run_step(
        &mut self,
        input: StepInput,
        mut trace: Option<&mut Trace>,
    ) -> Result<StepOutput, TalosError> {
        let s = *self.program.shape();
        if input.token >= s.vocab {
            return Err(TalosError::Token(input.token));
        }
        if input.pos >= s.block {
            return Err(TalosError::Position(input.pos));
        }
        let (tok, pos, e, hd) = (input.token, input.pos, s.embd, s.head_dim());
        if input.clear {
            self.keys.fill(0);
            self.values.fill(0);
        }
        // The RNG advances first, and only when sampling.
        let rng = if input.sample {
            microgpt_runtime::sampler::xorshift32(input.rng)
        } else {
            input.rng
        };
        let mut shortcuts = 0u32;
        for index in 0..self.program.ops().len() {
            let op = self.program.ops()[index];
            match op {
                Op::Embed { out } => {
                    let wte = &self.rom[self.layout.tensor(Param::Wte).range()][tok * e..][..e];
                    let wpe = &self.rom[self.layout.tensor(Param::Wpe).range()][pos * e..][..e];
                    for ((o, &a), &b) in self.buffers[out.index()].iter_mut().zip(wte).zip(wpe) {
                        *o = adds(a, b);
                    }
                }
                Op::RmsNorm { input: x, out } => {
                    let ss: u64 = self.buffers[x.index()]
                        .iter()
                        .map(|&v| (v as i64 * v as i64 / 4096) as u64)
                        .sum();
                    let (scale, shortcut) = rms_scale(ss);
                    shortcuts += shortcut as u32;
                    if let Some(t) = trace.as_deref_mut() {
                        t.rms_scales.push(scale);
                    }
                    for i in 0..e {
                        let v = mulq(self.buffers[x.index()][i], scale);
                        self.buffers[out.index()][i] = v;
                    }
                }
                Op::MatVec {
                    weight,
                    input: x,
                    out,
                } => self.matvec(weight, x, out),
                Op::Logits { input: x } => self.matvec(Param::LmHead, x, Buffer::Logits),
                Op::Attention { layer, q, k, v, out } => {
                    let n = s.block * e;
                    let base = layer * n;
                    for i in 0..e {
                        self.keys[base + pos * e + i] = self.buffers[k.index()][i];
                        self.values[base + pos * e + i] = self.buffers[v.index()][i];
                    }
                    let mut scores = [0i32; 16];
                    for h in 0..s.heads {
                        let ch = h * hd..h * hd + hd;
                        let mut top = i32::MIN;
                        for (t, score) in scores.iter_mut().enumerate().take(pos + 1) {
                            let dot: i64 = ch
                                .clone()
                                .map(|j| {
                                    self.buffers[q.index()][j] as i64 * self.keys[base + t * e + j] as i64
                                })
                                .sum();
                            // dot / 2^12, then / 2 for 1/√head_dim: two floor shifts, one floor.
                            *score = sat16(dot >> 13) as i32;
                            top = top.max(*score);
                        }
                        let mut weights = [0u32; 16];
                        let mut total = 0u32;
                        for t in 0..=pos {
                            weights[t] = expa(scores[t] - top);
                            total = total.wrapping_add(weights[t]);
                        }
                        for j in ch {
                            let num: i64 = (0..=pos)
                                .map(|t| weights[t] as i64 * self.values[base + t * e + j] as i64)
                                .sum();
                            self.buffers[out.index()][j] = divs(num, total);
                        }
                    }
                }
                Op::Add { input: x, into } => {
                    for i in 0..e {
                        let v = adds(self.buffers[into.index()][i], self.buffers[x.index()][i]);
                        self.buffers[into.index()][i] = v;
                    }
                }
                Op::Relu { buf } => {
                    for v in self.buffers[buf.index()].iter_mut() {
                        *v = (*v).max(0);
                    }
                }
            }
            if let Some(t) = trace.as_deref_mut() {
                let out = op.output();
                t.ops.push((index, out, self.buffers[out.index()].clone()));
            }
        }

        // Top logit and argmax: the lowest index holding the maximum.
        let logits = &self.buffers[Buffer::Logits.index()];
        let (mut top, mut argmax) = (i16::MIN, 0);
        for (r, &l) in logits.iter().enumerate() {
            if l > top {
                top = l;
                argmax = r;
            }
        }
        let mut cycles = 868 + 20 * pos as u32 - 25 * shortcuts;
        let next = if input.sample {
            let mut weights = [0u32; 27];
            let mut total = 0u32;
            for (w, &l) in weights.iter_mut().zip(logits) {
                // The gap is formed in 32 bits: never wrapped to 16.
                *w = sample_weight(tshift(l as i32 - top as i32, input.theta));
                total = total.wrapping_add(*w);
            }
            let total = total.max(1);
            let r24 = rng.wrapping_mul(SAMPLER_MIX) >> 8;
            let cut = (((r24 as u64 * total as u64) >> 24) as u32).min(total - 1);
            let mut acc = 0u32;
            let next = weights
                .iter()
                .position(|&w| {
                    acc = acc.wrapping_add(w);
                    acc > cut
                })
                .unwrap_or(argmax);
            if let Some(t) = trace {
                t.weights = weights.to_vec();
                t.weight_sum = total;
                t.cut = cut;
            }
            next
        } else {
            // Direct mode skips the sampler's 114 cycles.
            cycles -= 114;
            argmax
        };
        Ok(StepOutput {
            next,
            rng,
            top,
            argmax,
            cycles,
        })
    }

    /// `out = SAT16(floor(W · x / 2^12))`, exactly (see `columns`).
    #[inline(always)]
    fn matvec(&mut self, weight: Param, x: Buffer, out: Buffer) {
        let index = self
            .layout
            .tensors()
            .iter()
            .position(|t| t.param == weight)
            .expect("a model tensor");
        let rows = self.layout.tensors()[index].rows;
        let columns = &self.columns[index];
        let (xs, ys) = pair(&mut self.buffers, x, out);
        // Fixed row counts let the compiler keep the sums in vector registers.
        match rows {
            16 => columns_into::<16>(columns, xs, ys),
            27 => columns_into::<27>(columns, xs, ys),
            64 => columns_into::<64>(columns, xs, ys),
            _ => unreachable!("TALOS-V2 has matrices of 16, 27 and 64 rows"),
        }
    }
}

/// `ys = SAT16(floor(Σ_c column_c · xs[c] / 2^12))` for `R` rows, in exact f64 arithmetic
/// (dividing an integer below 2^53 by 4096 and flooring is exact too).
#[inline(always)]
fn columns_into<const R: usize>(columns: &[f64], xs: &[i16], ys: &mut [i16]) {
    let mut acc = [0.0f64; R];
    for (&xc, col) in xs.iter().zip(columns.chunks_exact(R)) {
        let xc = xc as f64;
        let col: &[f64; R] = col.try_into().expect("R rows");
        for r in 0..R {
            acc[r] += col[r] * xc;
        }
    }
    for (y, &a) in ys.iter_mut().zip(acc.iter()) {
        *y = (a * (1.0 / 4096.0)).floor().clamp(-32768.0, 32767.0) as i32 as i16;
    }
}
