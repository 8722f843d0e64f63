//! A thin layer over Cranelift's `FunctionBuilder`: the 128-bit vector operations the renderers
//! use (f32x4, i32x4, i16x8), constants, and addressing into the state block.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::immediates::Ieee32;
use cranelift_codegen::ir::types::{F32X4, I8X16, I16X8, I32X4, I64};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use microgpt_model::numerics::{ExpOps, F32Ops, exp_rule};

/// f32 lanes per vector.
pub const LANES: usize = 4;

/// Loads and stores into the state block: aligned, never trapping (the layout guarantees both).
pub fn mem() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Reinterpreting a vector's bits (little-endian lanes on every target this runs on).
fn bits() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

/// Scalar `f32` rules of the model ([`microgpt_model::numerics`]) as Cranelift instructions.
impl F32Ops for Cl<'_> {
    type V = Value;
    fn constant(&mut self, x: f32) -> Value {
        self.f32(x)
    }
    fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }
    fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }
    fn div(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }
    fn sqrt(&mut self, a: Value) -> Value {
        self.b.ins().sqrt(a)
    }
}

/// [`ExpOps`] on f32x4 values (constants are splat vectors).
pub struct Lanes<'c, 'a>(pub &'c mut Cl<'a>);

impl F32Ops for Lanes<'_, '_> {
    type V = Value;
    fn constant(&mut self, x: f32) -> Value {
        self.0.splat_f(x)
    }
    fn mul(&mut self, a: Value, b: Value) -> Value {
        self.0.fmul(a, b)
    }
    fn add(&mut self, a: Value, b: Value) -> Value {
        self.0.fadd(a, b)
    }
    fn div(&mut self, a: Value, b: Value) -> Value {
        self.0.fdiv(a, b)
    }
    fn sqrt(&mut self, a: Value) -> Value {
        self.0.b.ins().sqrt(a)
    }
}

impl ExpOps for Lanes<'_, '_> {
    fn sub(&mut self, a: Value, b: Value) -> Value {
        self.0.fsub(a, b)
    }
    fn min(&mut self, a: Value, b: Value) -> Value {
        self.0.fmin(a, b)
    }
    fn max(&mut self, a: Value, b: Value) -> Value {
        self.0.fmax(a, b)
    }
    fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.0.fma(a, b, c)
    }
    fn round(&mut self, a: Value) -> Value {
        self.0.b.ins().nearest(a)
    }
    fn pow2(&mut self, n: Value) -> Value {
        let ni = self.0.integral_to_i32(n);
        let bias = self.0.splat_i(127);
        let e = self.0.b.ins().iadd(ni, bias);
        let e = self.0.b.ins().ishl_imm_s(e, 23);
        self.0.bitcast(F32X4, e)
    }
}

/// The builder of one generated function.
pub struct Cl<'a> {
    pub b: FunctionBuilder<'a>,
}

impl<'a> Cl<'a> {
    pub fn new(b: FunctionBuilder<'a>) -> Cl<'a> {
        Cl { b }
    }

    // ---- constants and addressing ---------------------------------------------------------

    pub fn f32(&mut self, x: f32) -> Value {
        self.b.ins().f32const(Ieee32::with_float(x))
    }

    /// A constant vector from the constant pool: instructions can read it from memory, so it
    /// occupies no register between uses.
    fn vconst(&mut self, ty: Type, bytes: Vec<u8>) -> Value {
        let c = self.b.func.dfg.constants.insert(bytes.into());
        self.b.ins().vconst(ty, c)
    }

    pub fn splat_f(&mut self, x: f32) -> Value {
        let bytes = x.to_le_bytes().repeat(LANES);
        self.vconst(F32X4, bytes)
    }

    pub fn splat_i(&mut self, x: i32) -> Value {
        let bytes = x.to_le_bytes().repeat(LANES);
        self.vconst(I32X4, bytes)
    }

    /// `base + index · stride` (an address), `index` an i32 value.
    pub fn index(&mut self, base: Value, index: Value, stride: usize) -> Value {
        let i = self.b.ins().uextend(I64, index);
        let off = self.b.ins().imul_imm_s(i, stride as i64);
        self.b.ins().iadd(base, off)
    }

    pub fn load(&mut self, ty: Type, addr: Value, offset: usize) -> Value {
        self.b.ins().load(ty, mem(), addr, offset as i32)
    }

    pub fn store(&mut self, value: Value, addr: Value, offset: usize) {
        self.b.ins().store(mem(), value, addr, offset as i32);
    }

    pub fn bitcast(&mut self, ty: Type, v: Value) -> Value {
        self.b.ins().bitcast(ty, bits(), v)
    }

    // ---- f32x4 ----------------------------------------------------------------------------

    pub fn fadd(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }

    pub fn fsub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fsub(a, b)
    }

    pub fn fmul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }

    pub fn fdiv(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }

    /// The larger of `a` and `b` per lane, without IEEE `max`'s NaN and signed-zero care (which
    /// costs Cranelift eight instructions on x86): a compare and a select, `maxps` when lowered.
    pub fn fmax(&mut self, a: Value, b: Value) -> Value {
        let lt = self.b.ins().fcmp(FloatCC::LessThan, a, b);
        let ty = self.b.func.dfg.value_type(a);
        let lt = self.bitcast(ty, lt);
        self.b.ins().bitselect(lt, b, a)
    }

    /// The smaller of `a` and `b` per lane (see [`Cl::fmax`]).
    pub fn fmin(&mut self, a: Value, b: Value) -> Value {
        let lt = self.b.ins().fcmp(FloatCC::LessThan, b, a);
        let ty = self.b.func.dfg.value_type(a);
        let lt = self.bitcast(ty, lt);
        self.b.ins().bitselect(lt, b, a)
    }

    /// Integral f32 lanes (|v| < 2^22) to i32, exactly: added to 1.5·2^23 they sit in the low
    /// mantissa bits. Cheaper than Cranelift's saturating conversion.
    pub fn integral_to_i32(&mut self, v: Value) -> Value {
        let magic = self.splat_f(12_582_912.0);
        let t = self.fadd(v, magic);
        let t = self.bitcast(I32X4, t);
        let m = self.splat_i(0x4B40_0000);
        self.b.ins().isub(t, m)
    }

    /// `a · b + c`, fused.
    pub fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.b.ins().fma(a, b, c)
    }

    pub fn lane(&mut self, v: Value, lane: usize) -> Value {
        self.b.ins().extractlane(v, lane as u8)
    }

    /// Every lane set to lane `lane` of `v`.
    pub fn broadcast(&mut self, v: Value, lane: usize) -> Value {
        let s = self.lane(v, lane);
        let ty = self.b.func.dfg.value_type(v);
        self.b.ins().splat(ty, s)
    }

    /// A byte shuffle of one vector (any 128-bit type), as lane indices of `width` bytes.
    fn permute(&mut self, v: Value, lanes: &[usize]) -> Value {
        let ty = self.b.func.dfg.value_type(v);
        let width = 16 / lanes.len();
        let mut mask = [0u8; 16];
        for (i, &src) in lanes.iter().enumerate() {
            for k in 0..width {
                mask[i * width + k] = (src * width + k) as u8;
            }
        }
        let bytes = self.bitcast(I8X16, v);
        let imm = self.b.func.dfg.immediates.push(mask.to_vec().into());
        let s = self.b.ins().shuffle(bytes, bytes, imm);
        self.bitcast(ty, s)
    }

    /// Lane `i` takes lane `i ^ dist` (four-lane vectors).
    pub fn swap(&mut self, v: Value, dist: usize) -> Value {
        let lanes: Vec<usize> = (0..LANES).map(|i| i ^ dist).collect();
        self.permute(v, &lanes)
    }

    /// Lanes shifted up by `by`, zeros shifted in.
    pub fn shift_up(&mut self, v: Value, by: usize) -> Value {
        let ty = self.b.func.dfg.value_type(v);
        let zero = self.splat_i(0);
        let zero = self.bitcast(ty, zero);
        let a = self.bitcast(I8X16, zero);
        let b = self.bitcast(I8X16, v);
        // Bytes 0..16 select from `a` (zeros), 16..32 from `b`.
        let mut mask = [0u8; 16];
        for (i, m) in mask.iter_mut().enumerate() {
            *m = if i < 4 * by {
                i as u8
            } else {
                (16 + i - 4 * by) as u8
            };
        }
        let imm = self.b.func.dfg.immediates.push(mask.to_vec().into());
        let s = self.b.ins().shuffle(a, b, imm);
        self.bitcast(ty, s)
    }

    /// Sum of the four lanes (an f32), left to right.
    pub fn hsum(&mut self, v: Value) -> Value {
        let mut acc = self.lane(v, 0);
        for i in 1..LANES {
            let x = self.lane(v, i);
            acc = self.b.ins().fadd(acc, x);
        }
        acc
    }

    /// Largest of the four lanes, in every lane.
    pub fn all_max(&mut self, v: Value) -> Value {
        let s = self.swap(v, 2);
        let m = self.fmax(v, s);
        let s = self.swap(m, 1);
        self.fmax(m, s)
    }

    /// Sum of the four lanes, in every lane.
    pub fn all_sum(&mut self, v: Value) -> Value {
        let s = self.swap(v, 2);
        let m = self.fadd(v, s);
        let s = self.swap(m, 1);
        self.fadd(m, s)
    }

    /// Keeps lanes `0..valid`, the others set to `fill`.
    pub fn keep_lanes(&mut self, v: Value, valid: usize, fill: f32) -> Value {
        if valid >= LANES {
            return v;
        }
        let mask = self.lane_mask(valid);
        let mask = self.bitcast(F32X4, mask);
        let f = self.splat_f(fill);
        self.b.ins().bitselect(mask, v, f)
    }

    /// An i32x4 of -1 in lanes `0..valid`, 0 elsewhere.
    pub fn lane_mask(&mut self, valid: usize) -> Value {
        let bytes = (0..LANES)
            .flat_map(|lane| (if lane < valid { -1i32 } else { 0 }).to_le_bytes())
            .collect();
        self.vconst(I32X4, bytes)
    }

    /// -1 in the lanes of `a` that are `<= b`, else 0 (i32x4).
    pub fn le_mask(&mut self, a: Value, b: Value) -> Value {
        let m = self.b.ins().fcmp(FloatCC::LessThanOrEqual, a, b);
        self.bitcast(I32X4, m)
    }

    /// `e^x` per lane: `microgpt_model::numerics::exp_rule`, fused (fp32) or rounded step by
    /// step (Q4.12, matching the reference bit for bit).
    pub fn exp(&mut self, x: Value, fused: bool) -> Value {
        exp_rule(&mut Lanes(self), x, fused)
    }

    // ---- i32x4 / i16x8 --------------------------------------------------------------------

    /// Four i16 at `addr + offset`, sign-extended to i32 lanes.
    pub fn load_i16x4(&mut self, addr: Value, offset: usize) -> Value {
        let v = self.b.ins().load(I64, mem(), addr, offset as i32);
        let v = self
            .b
            .ins()
            .scalar_to_vector(cranelift_codegen::ir::types::I64X2, v);
        let v = self.bitcast(I16X8, v);
        self.b.ins().swiden_low(v)
    }

    /// Clamp i32 lanes to the i16 range.
    pub fn sat16(&mut self, v: Value) -> Value {
        let hi = self.splat_i(32767);
        let lo = self.splat_i(-32768);
        let v = self.b.ins().smin(v, hi);
        self.b.ins().smax(v, lo)
    }

    /// Wrap i32 lanes to i16 (two's complement), sign-extended back.
    pub fn wrap16(&mut self, v: Value) -> Value {
        let v = self.b.ins().ishl_imm_s(v, 16);
        self.b.ins().sshr_imm_s(v, 16)
    }

    /// Rounds f32 lanes half to even and saturates them to the i16 range, as i32 lanes
    /// (clamping first gives the same result: the bounds are integers).
    pub fn round_sat16(&mut self, v: Value) -> Value {
        let lo = self.splat_f(-32768.0);
        let hi = self.splat_f(32767.0);
        let v = self.fmin(v, hi);
        let v = self.fmax(v, lo);
        let n = self.b.ins().nearest(v);
        self.integral_to_i32(n)
    }

    pub fn i32_to_f32(&mut self, v: Value) -> Value {
        self.b.ins().fcvt_from_sint(F32X4, v)
    }
}
