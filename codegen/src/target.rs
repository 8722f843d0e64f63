//! The instruction sets kernels are generated for, and how each spells the vector operations
//! the renderers use. Every function returns Rust tokens; the renderers never name an intrinsic.

use proc_macro2::Ident;
use proc_macro2::TokenStream;
use quote::quote;

/// A SIMD target (or the portable scalar fallback).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Scalar,
    /// x86-64 with 128-bit vectors (SSE4.1, FMA): the width the JIT has.
    Sse,
    Avx2,
    Avx512,
    Neon,
}

type T = TokenStream;

impl Target {
    pub const ALL: [Target; 5] = [
        Target::Scalar,
        Target::Sse,
        Target::Avx2,
        Target::Avx512,
        Target::Neon,
    ];

    /// f32 (and i32) lanes per register.
    pub fn lanes(self) -> usize {
        match self {
            Target::Scalar => 1,
            Target::Sse => 4,
            Target::Avx2 => 8,
            Target::Avx512 => 16,
            Target::Neon => 4,
        }
    }

    /// Lower-case name used in module and variant names.
    pub fn slug(self) -> &'static str {
        match self {
            Target::Scalar => "scalar",
            Target::Sse => "sse",
            Target::Avx2 => "avx2",
            Target::Avx512 => "avx512",
            Target::Neon => "neon",
        }
    }

    /// `target_arch` the code compiles for (`None`: every architecture).
    pub fn arch(self) -> Option<&'static str> {
        match self {
            Target::Scalar => None,
            Target::Sse | Target::Avx2 | Target::Avx512 => Some("x86_64"),
            Target::Neon => Some("aarch64"),
        }
    }

    /// CPU features the fp32 kernels need (enabled on the functions, checked at run time).
    pub fn features(self, vnni: bool) -> Vec<&'static str> {
        match self {
            Target::Scalar | Target::Neon => vec![],
            Target::Sse => vec!["sse4.1", "fma", "popcnt"],
            Target::Avx2 => vec!["avx2", "fma", "popcnt"],
            Target::Avx512 if vnni => vec!["avx512f", "avx512bw", "avx512vl", "avx512vnni", "fma", "popcnt"],
            Target::Avx512 => vec!["avx512f", "avx512bw", "avx512vl", "fma", "popcnt"],
        }
    }

    /// `use` lines for the intrinsics.
    pub fn imports(self) -> T {
        match self {
            Target::Scalar => quote! {},
            Target::Sse | Target::Avx2 | Target::Avx512 => quote! { use ::core::arch::x86_64::*; },
            Target::Neon => quote! { use ::core::arch::aarch64::*; },
        }
    }

    /// The attributes of every generated function that uses intrinsics.
    pub fn fn_attrs(self, vnni: bool) -> T {
        let features = self.features(vnni);
        if features.is_empty() {
            quote! { #[inline] }
        } else {
            let list = features.join(",");
            quote! { #[inline] #[target_feature(enable = #list)] }
        }
    }

    // ---- f32 vectors -------------------------------------------------------------------------

    /// The f32 vector type.
    pub fn vf(self) -> T {
        match self {
            Target::Scalar => quote! { f32 },
            Target::Sse => quote! { __m128 },
            Target::Avx2 => quote! { __m256 },
            Target::Avx512 => quote! { __m512 },
            Target::Neon => quote! { float32x4_t },
        }
    }

    pub fn load(self, ptr: T) -> T {
        match self {
            Target::Scalar => quote! { *#ptr },
            Target::Sse => quote! { _mm_loadu_ps(#ptr) },
            Target::Avx2 => quote! { _mm256_loadu_ps(#ptr) },
            Target::Avx512 => quote! { _mm512_loadu_ps(#ptr) },
            Target::Neon => quote! { vld1q_f32(#ptr) },
        }
    }

    pub fn store(self, ptr: T, v: T) -> T {
        match self {
            Target::Scalar => quote! { *#ptr = #v; },
            Target::Sse => quote! { _mm_storeu_ps(#ptr, #v); },
            Target::Avx2 => quote! { _mm256_storeu_ps(#ptr, #v); },
            Target::Avx512 => quote! { _mm512_storeu_ps(#ptr, #v); },
            Target::Neon => quote! { vst1q_f32(#ptr, #v); },
        }
    }

    pub fn splat(self, x: T) -> T {
        match self {
            Target::Scalar => quote! { (#x) },
            Target::Sse => quote! { _mm_set1_ps(#x) },
            Target::Avx2 => quote! { _mm256_set1_ps(#x) },
            Target::Avx512 => quote! { _mm512_set1_ps(#x) },
            Target::Neon => quote! { vdupq_n_f32(#x) },
        }
    }

    pub fn zero(self) -> T {
        self.splat(quote! { 0.0f32 })
    }

    fn bin(self, a: T, b: T, names: [&str; 3], op: T) -> T {
        let f = |n: &str| syn::Ident::new(n, proc_macro2::Span::call_site());
        match self {
            Target::Scalar => quote! { (#a #op #b) },
            Target::Sse => {
                let f = f(&names[0].replace("_mm256_", "_mm_"));
                quote! { #f(#a, #b) }
            }
            Target::Avx2 => {
                let f = f(names[0]);
                quote! { #f(#a, #b) }
            }
            Target::Avx512 => {
                let f = f(names[1]);
                quote! { #f(#a, #b) }
            }
            Target::Neon => {
                let f = f(names[2]);
                quote! { #f(#a, #b) }
            }
        }
    }

    pub fn add(self, a: T, b: T) -> T {
        self.bin(
            a,
            b,
            ["_mm256_add_ps", "_mm512_add_ps", "vaddq_f32"],
            quote! { + },
        )
    }

    pub fn sub(self, a: T, b: T) -> T {
        self.bin(
            a,
            b,
            ["_mm256_sub_ps", "_mm512_sub_ps", "vsubq_f32"],
            quote! { - },
        )
    }

    pub fn mul(self, a: T, b: T) -> T {
        self.bin(
            a,
            b,
            ["_mm256_mul_ps", "_mm512_mul_ps", "vmulq_f32"],
            quote! { * },
        )
    }

    pub fn div(self, a: T, b: T) -> T {
        self.bin(
            a,
            b,
            ["_mm256_div_ps", "_mm512_div_ps", "vdivq_f32"],
            quote! { / },
        )
    }

    pub fn max(self, a: T, b: T) -> T {
        match self {
            Target::Scalar => quote! { (#a).max(#b) },
            _ => self.bin(a, b, ["_mm256_max_ps", "_mm512_max_ps", "vmaxq_f32"], quote! {}),
        }
    }

    pub fn min(self, a: T, b: T) -> T {
        match self {
            Target::Scalar => quote! { (#a).min(#b) },
            _ => self.bin(a, b, ["_mm256_min_ps", "_mm512_min_ps", "vminq_f32"], quote! {}),
        }
    }

    /// `a · b + c`, fused on every SIMD target (the scalar fallback multiplies and adds, since a
    /// fused multiply-add is a library call on CPUs without FMA).
    pub fn fma(self, a: T, b: T, c: T) -> T {
        match self {
            Target::Scalar => quote! { (#a * #b + #c) },
            Target::Sse => quote! { _mm_fmadd_ps(#a, #b, #c) },
            Target::Avx2 => quote! { _mm256_fmadd_ps(#a, #b, #c) },
            Target::Avx512 => quote! { _mm512_fmadd_ps(#a, #b, #c) },
            Target::Neon => quote! { vfmaq_f32(#c, #a, #b) },
        }
    }

    /// Round to nearest, ties to even.
    pub fn round(self, v: T) -> T {
        match self {
            Target::Scalar => quote! { (#v).round_ties_even() },
            Target::Sse => quote! { _mm_round_ps(#v, 0x08) },
            Target::Avx2 => quote! { _mm256_round_ps(#v, 0x08) },
            Target::Avx512 => quote! { _mm512_roundscale_ps(#v, 0x08) },
            Target::Neon => quote! { vrndnq_f32(#v) },
        }
    }

    /// `2^n` for integral `n` in [-126, 127], built from the exponent bits.
    pub fn exp2_int(self, n: T) -> T {
        match self {
            Target::Scalar => quote! { f32::from_bits(((#n as i32 + 127) << 23) as u32) },
            Target::Sse => quote! {
                _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(#n), _mm_set1_epi32(127)), 23))
            },
            Target::Avx2 => quote! {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(#n), _mm256_set1_epi32(127)), 23))
            },
            Target::Avx512 => quote! {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(#n), _mm512_set1_epi32(127)), 23))
            },
            Target::Neon => quote! {
                vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(#n), vdupq_n_s32(127)), 23))
            },
        }
    }

    /// Sum of all lanes, as an f32.
    pub fn hsum(self, v: T) -> T {
        match self {
            Target::Scalar => v,
            Target::Sse => quote! {{
                let __h = _mm_add_ps(#v, _mm_movehl_ps(#v, #v));
                _mm_cvtss_f32(_mm_add_ss(__h, _mm_movehdup_ps(__h)))
            }},
            Target::Avx2 => quote! {{
                let __h = _mm_add_ps(_mm256_castps256_ps128(#v), _mm256_extractf128_ps(#v, 1));
                let __h = _mm_add_ps(__h, _mm_movehl_ps(__h, __h));
                _mm_cvtss_f32(_mm_add_ss(__h, _mm_movehdup_ps(__h)))
            }},
            Target::Avx512 => quote! { _mm512_reduce_add_ps(#v) },
            Target::Neon => quote! { vaddvq_f32(#v) },
        }
    }

    /// Largest lane, as an f32.
    pub fn hmax(self, v: T) -> T {
        match self {
            Target::Scalar => v,
            Target::Sse => quote! {{
                let __h = _mm_max_ps(#v, _mm_movehl_ps(#v, #v));
                _mm_cvtss_f32(_mm_max_ss(__h, _mm_movehdup_ps(__h)))
            }},
            Target::Avx2 => quote! {{
                let __h = _mm_max_ps(_mm256_castps256_ps128(#v), _mm256_extractf128_ps(#v, 1));
                let __h = _mm_max_ps(__h, _mm_movehl_ps(__h, __h));
                _mm_cvtss_f32(_mm_max_ss(__h, _mm_movehdup_ps(__h)))
            }},
            Target::Avx512 => quote! { _mm512_reduce_max_ps(#v) },
            Target::Neon => quote! { vmaxvq_f32(#v) },
        }
    }

    /// Lane `i` takes lane `i ^ dist` (`dist` a power of two below the lane count): one step of
    /// a reduction inside groups of lanes.
    pub fn swap(self, v: T, dist: usize) -> T {
        match (self, dist) {
            (Target::Sse, 1) => quote! { _mm_shuffle_ps(#v, #v, 0xB1) },
            (Target::Sse, 2) => quote! { _mm_shuffle_ps(#v, #v, 0x4E) },
            (Target::Avx2, 1) => quote! { _mm256_permute_ps(#v, 0xB1) },
            (Target::Avx2, 2) => quote! { _mm256_permute_ps(#v, 0x4E) },
            (Target::Avx2, 4) => quote! { _mm256_permute2f128_ps(#v, #v, 0x01) },
            (Target::Avx512, 1) => quote! { _mm512_permute_ps(#v, 0xB1) },
            (Target::Avx512, 2) => quote! { _mm512_permute_ps(#v, 0x4E) },
            (Target::Avx512, 4) => quote! { _mm512_shuffle_f32x4(#v, #v, 0xB1) },
            (Target::Avx512, 8) => quote! { _mm512_shuffle_f32x4(#v, #v, 0x4E) },
            (Target::Neon, 1) => quote! { vrev64q_f32(#v) },
            (Target::Neon, 2) => quote! { vextq_f32(#v, #v, 2) },
            _ => unreachable!("swap by {dist} on {self:?}"),
        }
    }

    /// Keeps lanes `0..valid` of `v` and sets the others to `fill` (an f32 expression).
    pub fn keep_lanes(self, v: T, valid: usize, fill: T) -> T {
        let lanes = self.lanes();
        if valid >= lanes {
            return v;
        }
        match self {
            Target::Scalar => unreachable!("a scalar register is one lane"),
            Target::Avx512 => {
                let mask = ((1u32 << valid) - 1) as u16;
                quote! { _mm512_mask_mov_ps(_mm512_set1_ps(#fill), #mask, #v) }
            }
            Target::Sse => {
                let m: Vec<i32> = (0..4).map(|i| if i < valid { -1 } else { 0 }).collect();
                quote! { _mm_blendv_ps(_mm_set1_ps(#fill), #v, _mm_castsi128_ps(_mm_setr_epi32(#(#m),*))) }
            }
            Target::Avx2 => {
                let m: Vec<i32> = (0..8).map(|i| if i < valid { -1 } else { 0 }).collect();
                quote! { _mm256_blendv_ps(_mm256_set1_ps(#fill), #v, _mm256_castsi256_ps(_mm256_setr_epi32(#(#m),*))) }
            }
            Target::Neon => {
                let m: Vec<u32> = (0..4).map(|i| if i < valid { u32::MAX } else { 0 }).collect();
                quote! {{
                    let __mask: [u32; 4] = [#(#m),*];
                    vbslq_f32(vld1q_u32(__mask.as_ptr()), #v, vdupq_n_f32(#fill))
                }}
            }
        }
    }

    /// Inclusive prefix sum across the lanes of `v`.
    pub fn scan(self, v: T) -> T {
        match self {
            Target::Scalar => v,
            Target::Sse => quote! {{
                let __s = _mm_add_ps(#v, _mm_castsi128_ps(_mm_slli_si128(_mm_castps_si128(#v), 4)));
                _mm_add_ps(__s, _mm_castsi128_ps(_mm_slli_si128(_mm_castps_si128(__s), 8)))
            }},
            Target::Avx512 => quote! {{
                let __z = _mm512_setzero_si512();
                let __s = _mm512_castps_si512(#v);
                let __s = _mm512_add_ps(_mm512_castsi512_ps(__s), _mm512_castsi512_ps(_mm512_alignr_epi32(__s, __z, 15)));
                let __s = _mm512_castps_si512(__s);
                let __s = _mm512_add_ps(_mm512_castsi512_ps(__s), _mm512_castsi512_ps(_mm512_alignr_epi32(__s, __z, 14)));
                let __s = _mm512_castps_si512(__s);
                let __s = _mm512_add_ps(_mm512_castsi512_ps(__s), _mm512_castsi512_ps(_mm512_alignr_epi32(__s, __z, 12)));
                let __s = _mm512_castps_si512(__s);
                _mm512_add_ps(_mm512_castsi512_ps(__s), _mm512_castsi512_ps(_mm512_alignr_epi32(__s, __z, 8)))
            }},
            Target::Avx2 => quote! {{
                let __s = _mm256_castps_si256(#v);
                let __s = _mm256_add_ps(_mm256_castsi256_ps(__s), _mm256_castsi256_ps(_mm256_slli_si256(__s, 4)));
                let __s = _mm256_castps_si256(__s);
                let __s = _mm256_add_ps(_mm256_castsi256_ps(__s), _mm256_castsi256_ps(_mm256_slli_si256(__s, 8)));
                // Carry the low half's total into the high half.
                let __low = _mm256_permute2f128_ps(__s, __s, 0x08);
                _mm256_add_ps(__s, _mm256_permute_ps(__low, 0xFF))
            }},
            Target::Neon => quote! {{
                let __z = vdupq_n_f32(0.0);
                let __s = vaddq_f32(#v, vextq_f32(__z, #v, 3));
                vaddq_f32(__s, vextq_f32(__z, __s, 2))
            }},
        }
    }

    /// Every lane set to the last lane of `v`.
    pub fn splat_last(self, v: T) -> T {
        match self {
            Target::Scalar => v,
            Target::Sse => quote! { _mm_shuffle_ps(#v, #v, 0xFF) },
            Target::Avx512 => quote! { _mm512_permutexvar_ps(_mm512_set1_epi32(15), #v) },
            Target::Avx2 => quote! { _mm256_permutevar8x32_ps(#v, _mm256_set1_epi32(7)) },
            Target::Neon => quote! { vdupq_laneq_f32(#v, 3) },
        }
    }

    /// How many of lanes `0..valid` of `c` are `<= thr` (a u32).
    pub fn count_le(self, c: T, thr: T, valid: usize) -> T {
        let lanes = self.lanes();
        let valid = valid.min(lanes);
        match self {
            Target::Scalar => quote! { ((#c <= #thr) as u32) },
            Target::Avx512 => {
                let mask = ((1u64 << valid) - 1) as u16;
                quote! { (_mm512_cmp_ps_mask(#c, #thr, _CMP_LE_OQ) & #mask).count_ones() }
            }
            Target::Sse => {
                let mask = ((1u32 << valid) - 1) as i32;
                quote! { ((_mm_movemask_ps(_mm_cmple_ps(#c, #thr)) & #mask) as u32).count_ones() }
            }
            Target::Avx2 => {
                let mask = ((1u32 << valid) - 1) as i32;
                quote! { ((_mm256_movemask_ps(_mm256_cmp_ps(#c, #thr, _CMP_LE_OQ)) & #mask) as u32).count_ones() }
            }
            Target::Neon => {
                let m: Vec<u32> = (0..4).map(|i| u32::from(i < valid)).collect();
                quote! {{
                    let __mask: [u32; 4] = [#(#m),*];
                    vaddvq_u32(vandq_u32(vcleq_f32(#c, #thr), vld1q_u32(__mask.as_ptr())))
                }}
            }
        }
    }

    // ---- i32 vectors (Q4.12 activations, one i32 lane per value) ------------------------------

    /// The i32 vector type.
    pub fn vi(self) -> T {
        match self {
            Target::Scalar => quote! { i32 },
            Target::Sse => quote! { __m128i },
            Target::Avx2 => quote! { __m256i },
            Target::Avx512 => quote! { __m512i },
            Target::Neon => quote! { int32x4_t },
        }
    }

    /// Loads `lanes` i16 values and sign-extends them to i32 lanes.
    pub fn load_i16(self, ptr: T) -> T {
        match self {
            Target::Scalar => quote! { (*#ptr as i32) },
            Target::Sse => quote! { _mm_cvtepi16_epi32(_mm_loadl_epi64(#ptr as *const __m128i)) },
            Target::Avx2 => quote! { _mm256_cvtepi16_epi32(_mm_loadu_si128(#ptr as *const __m128i)) },
            Target::Avx512 => quote! { _mm512_cvtepi16_epi32(_mm256_loadu_si256(#ptr as *const __m256i)) },
            Target::Neon => quote! { vmovl_s16(vld1_s16(#ptr)) },
        }
    }

    pub fn load_i32(self, ptr: T) -> T {
        match self {
            Target::Scalar => quote! { *#ptr },
            Target::Sse => quote! { _mm_loadu_si128(#ptr as *const __m128i) },
            Target::Avx2 => quote! { _mm256_loadu_si256(#ptr as *const __m256i) },
            Target::Avx512 => quote! { _mm512_loadu_si512(#ptr as *const _) },
            Target::Neon => quote! { vld1q_s32(#ptr) },
        }
    }

    pub fn store_i32(self, ptr: T, v: T) -> T {
        match self {
            Target::Scalar => quote! { *#ptr = #v; },
            Target::Sse => quote! { _mm_storeu_si128(#ptr as *mut __m128i, #v); },
            Target::Avx2 => quote! { _mm256_storeu_si256(#ptr as *mut __m256i, #v); },
            Target::Avx512 => quote! { _mm512_storeu_si512(#ptr as *mut _, #v); },
            Target::Neon => quote! { vst1q_s32(#ptr, #v); },
        }
    }

    /// Stores i32 lanes (each within the i16 range) as i16.
    pub fn store_as_i16(self, ptr: T, v: T) -> T {
        match self {
            Target::Scalar => quote! { *#ptr = #v as i16; },
            Target::Sse => quote! { _mm_storel_epi64(#ptr as *mut __m128i, _mm_packs_epi32(#v, #v)); },
            Target::Avx2 => quote! {
                _mm_storeu_si128(#ptr as *mut __m128i, _mm_packs_epi32(_mm256_castsi256_si128(#v), _mm256_extracti128_si256(#v, 1)));
            },
            Target::Avx512 => {
                quote! { _mm256_storeu_si256(#ptr as *mut __m256i, _mm512_cvtepi32_epi16(#v)); }
            }
            Target::Neon => quote! { vst1_s16(#ptr, vmovn_s32(#v)); },
        }
    }

    pub fn splat_i32(self, x: T) -> T {
        match self {
            Target::Scalar => quote! { (#x) },
            Target::Sse => quote! { _mm_set1_epi32(#x) },
            Target::Avx2 => quote! { _mm256_set1_epi32(#x) },
            Target::Avx512 => quote! { _mm512_set1_epi32(#x) },
            Target::Neon => quote! { vdupq_n_s32(#x) },
        }
    }

    /// Wrapping i32 addition.
    pub fn add_i32(self, a: T, b: T) -> T {
        match self {
            Target::Scalar => quote! { (#a).wrapping_add(#b) },
            Target::Sse => quote! { _mm_add_epi32(#a, #b) },
            Target::Avx2 => quote! { _mm256_add_epi32(#a, #b) },
            Target::Avx512 => quote! { _mm512_add_epi32(#a, #b) },
            Target::Neon => quote! { vaddq_s32(#a, #b) },
        }
    }

    /// Low 32 bits of the product (exact for i16-range operands).
    pub fn mul_i32(self, a: T, b: T) -> T {
        match self {
            Target::Scalar => quote! { (#a).wrapping_mul(#b) },
            Target::Sse => quote! { _mm_mullo_epi32(#a, #b) },
            Target::Avx2 => quote! { _mm256_mullo_epi32(#a, #b) },
            Target::Avx512 => quote! { _mm512_mullo_epi32(#a, #b) },
            Target::Neon => quote! { vmulq_s32(#a, #b) },
        }
    }

    /// Arithmetic shift right by 12 (floor division by 4096).
    pub fn shr12(self, v: T) -> T {
        match self {
            Target::Scalar => quote! { ((#v) >> 12) },
            Target::Sse => quote! { _mm_srai_epi32(#v, 12) },
            Target::Avx2 => quote! { _mm256_srai_epi32(#v, 12) },
            Target::Avx512 => quote! { _mm512_srai_epi32(#v, 12) },
            Target::Neon => quote! { vshrq_n_s32(#v, 12) },
        }
    }

    /// Clamps i32 lanes to the i16 range.
    pub fn sat16(self, v: T) -> T {
        match self {
            Target::Scalar => quote! { (#v).clamp(-32768, 32767) },
            Target::Sse => {
                quote! { _mm_max_epi32(_mm_min_epi32(#v, _mm_set1_epi32(32767)), _mm_set1_epi32(-32768)) }
            }
            Target::Avx2 => {
                quote! { _mm256_max_epi32(_mm256_min_epi32(#v, _mm256_set1_epi32(32767)), _mm256_set1_epi32(-32768)) }
            }
            Target::Avx512 => {
                quote! { _mm512_max_epi32(_mm512_min_epi32(#v, _mm512_set1_epi32(32767)), _mm512_set1_epi32(-32768)) }
            }
            Target::Neon => quote! { vmaxq_s32(vminq_s32(#v, vdupq_n_s32(32767)), vdupq_n_s32(-32768)) },
        }
    }

    /// Wraps i32 lanes to i16 (two's complement), sign-extended back to i32.
    pub fn wrap16(self, v: T) -> T {
        match self {
            Target::Scalar => quote! { ((#v) as i16 as i32) },
            Target::Sse => quote! { _mm_srai_epi32(_mm_slli_epi32(#v, 16), 16) },
            Target::Avx2 => quote! { _mm256_srai_epi32(_mm256_slli_epi32(#v, 16), 16) },
            Target::Avx512 => quote! { _mm512_srai_epi32(_mm512_slli_epi32(#v, 16), 16) },
            Target::Neon => quote! { vshrq_n_s32(vshlq_n_s32(#v, 16), 16) },
        }
    }

    pub fn max0_i32(self, v: T) -> T {
        match self {
            Target::Scalar => quote! { (#v).max(0) },
            Target::Sse => quote! { _mm_max_epi32(#v, _mm_setzero_si128()) },
            Target::Avx2 => quote! { _mm256_max_epi32(#v, _mm256_setzero_si256()) },
            Target::Avx512 => quote! { _mm512_max_epi32(#v, _mm512_setzero_si512()) },
            Target::Neon => quote! { vmaxq_s32(#v, vdupq_n_s32(0)) },
        }
    }

    /// i32 → f32, rounding to nearest (exact for |v| < 2^24).
    pub fn i32_to_f32(self, v: T) -> T {
        match self {
            Target::Scalar => quote! { ((#v) as f32) },
            Target::Sse => quote! { _mm_cvtepi32_ps(#v) },
            Target::Avx2 => quote! { _mm256_cvtepi32_ps(#v) },
            Target::Avx512 => quote! { _mm512_cvtepi32_ps(#v) },
            Target::Neon => quote! { vcvtq_f32_s32(#v) },
        }
    }

    /// f32 → i32, rounding to nearest, ties to even (the values stay far inside the i32 range).
    pub fn f32_to_i32_round(self, v: T) -> T {
        match self {
            Target::Scalar => quote! { ((#v).round_ties_even() as i32) },
            Target::Sse => quote! { _mm_cvtps_epi32(#v) },
            Target::Avx2 => quote! { _mm256_cvtps_epi32(#v) },
            Target::Avx512 => quote! { _mm512_cvtps_epi32(#v) },
            Target::Neon => quote! { vcvtnq_s32_f32(#v) },
        }
    }

    /// Lane `i` takes lane `i ^ dist` of an i32 vector.
    pub fn swap_i32(self, v: T, dist: usize) -> T {
        match (self, dist) {
            (Target::Sse, 1) => quote! { _mm_shuffle_epi32(#v, 0xB1) },
            (Target::Sse, 2) => quote! { _mm_shuffle_epi32(#v, 0x4E) },
            (Target::Avx2, 1) => quote! { _mm256_shuffle_epi32(#v, 0xB1) },
            (Target::Avx2, 2) => quote! { _mm256_shuffle_epi32(#v, 0x4E) },
            (Target::Avx2, 4) => quote! { _mm256_permute2x128_si256(#v, #v, 0x01) },
            (Target::Avx512, 1) => quote! { _mm512_shuffle_epi32(#v, 0xB1) },
            (Target::Avx512, 2) => quote! { _mm512_shuffle_epi32(#v, 0x4E) },
            (Target::Avx512, 4) => quote! { _mm512_shuffle_i32x4(#v, #v, 0xB1) },
            (Target::Avx512, 8) => quote! { _mm512_shuffle_i32x4(#v, #v, 0x4E) },
            (Target::Neon, 1) => quote! { vrev64q_s32(#v) },
            (Target::Neon, 2) => quote! { vextq_s32(#v, #v, 2) },
            _ => unreachable!("swap by {dist} on {self:?}"),
        }
    }

    // ---- lane-batched kernels (one stream per lane) -----------------------------------------

    /// The mask type of a lane comparison.
    pub fn mask_ty(self) -> T {
        match self {
            Target::Avx512 => quote! { __mmask16 },
            Target::Avx2 => quote! { __m256 },
            Target::Sse => quote! { __m128 },
            Target::Neon => quote! { uint32x4_t },
            Target::Scalar => quote! { bool },
        }
    }

    /// Lanes of the i32 vector `v` that are `>= k` (`k` an i32 expression).
    pub fn ge_i32(self, v: T, k: T) -> T {
        match self {
            Target::Avx512 => quote! { _mm512_cmpge_epi32_mask(#v, _mm512_set1_epi32(#k)) },
            Target::Avx2 => quote! { _mm256_castsi256_ps(_mm256_cmpgt_epi32(#v, _mm256_set1_epi32(#k - 1))) },
            Target::Sse => quote! { _mm_castsi128_ps(_mm_cmpgt_epi32(#v, _mm_set1_epi32(#k - 1))) },
            Target::Neon => quote! { vcgeq_s32(#v, vdupq_n_s32(#k)) },
            Target::Scalar => quote! { (#v >= #k) },
        }
    }

    /// `v` where the mask is set, `fill` (an f32 vector) elsewhere.
    pub fn select(self, mask: T, v: T, fill: T) -> T {
        match self {
            Target::Avx512 => quote! { _mm512_mask_mov_ps(#fill, #mask, #v) },
            Target::Avx2 => quote! { _mm256_blendv_ps(#fill, #v, #mask) },
            Target::Sse => quote! { _mm_blendv_ps(#fill, #v, #mask) },
            Target::Neon => quote! { vbslq_f32(#mask, #v, #fill) },
            Target::Scalar => quote! { if #mask { #v } else { #fill } },
        }
    }

    /// Lanes of `a` that are `<= b` (f32).
    pub fn le(self, a: T, b: T) -> T {
        match self {
            Target::Avx512 => quote! { _mm512_cmp_ps_mask(#a, #b, _CMP_LE_OQ) },
            Target::Avx2 => quote! { _mm256_cmp_ps(#a, #b, _CMP_LE_OQ) },
            Target::Sse => quote! { _mm_cmple_ps(#a, #b) },
            Target::Neon => quote! { vcleq_f32(#a, #b) },
            Target::Scalar => quote! { (#a <= #b) },
        }
    }

    /// Whether every lane of `a` is `< b` (f32; false where either is NaN), as a `bool`.
    pub fn all_lt(self, a: T, b: T) -> T {
        match self {
            Target::Avx512 => quote! { (_mm512_cmp_ps_mask(#a, #b, _CMP_LT_OQ) == 0xffff) },
            Target::Avx2 => quote! { (_mm256_movemask_ps(_mm256_cmp_ps(#a, #b, _CMP_LT_OQ)) == 0xff) },
            Target::Sse => quote! { (_mm_movemask_ps(_mm_cmplt_ps(#a, #b)) == 0xf) },
            Target::Neon => quote! { (vminvq_u32(vcltq_f32(#a, #b)) != 0) },
            Target::Scalar => quote! { (#a < #b) },
        }
    }

    /// `count + 1` in the lanes where `mask` is set (i32 counts).
    pub fn count_where(self, count: T, mask: T) -> T {
        match self {
            Target::Avx512 => quote! { _mm512_mask_add_epi32(#count, #mask, #count, _mm512_set1_epi32(1)) },
            Target::Avx2 => quote! { _mm256_sub_epi32(#count, _mm256_castps_si256(#mask)) },
            Target::Sse => quote! { _mm_sub_epi32(#count, _mm_castps_si128(#mask)) },
            Target::Neon => quote! { vsubq_s32(#count, vreinterpretq_s32_u32(#mask)) },
            Target::Scalar => quote! { (#count + #mask as i32) },
        }
    }

    /// `1/√v` to within about 2 ulp: on AVX-512 `vrsqrt14ps` (14 bits) and one Newton step
    /// (shorter than a square root and a division); elsewhere exactly that pair.
    pub fn rsqrt(self, v: T) -> T {
        match self {
            Target::Avx512 => quote! {{
                let a = #v;
                let r = _mm512_rsqrt14_ps(a);
                let half_a_r = _mm512_mul_ps(_mm512_mul_ps(a, _mm512_set1_ps(0.5)), r);
                _mm512_mul_ps(r, _mm512_fnmadd_ps(half_a_r, r, _mm512_set1_ps(1.5)))
            }},
            _ => self.div(self.splat(quote! { 1.0f32 }), self.sqrt(v)),
        }
    }

    pub fn sqrt(self, v: T) -> T {
        match self {
            Target::Avx512 => quote! { _mm512_sqrt_ps(#v) },
            Target::Avx2 => quote! { _mm256_sqrt_ps(#v) },
            Target::Sse => quote! { _mm_sqrt_ps(#v) },
            Target::Neon => quote! { vsqrtq_f32(#v) },
            Target::Scalar => quote! { (#v).sqrt() },
        }
    }

    /// Lane `l` = `base[idx[l]]` for an f32 or i32 table (`int` picks the type).
    pub fn gather(self, base: T, idx: T, int: bool) -> T {
        match (self, int) {
            (Target::Avx512, false) => quote! { _mm512_i32gather_ps::<4>(#idx, #base) },
            (Target::Avx512, true) => quote! { _mm512_i32gather_epi32::<4>(#idx, #base) },
            (Target::Avx2, false) => quote! { _mm256_i32gather_ps::<4>(#base, #idx) },
            (Target::Avx2, true) => quote! { _mm256_i32gather_epi32::<4>(#base, #idx) },
            (Target::Neon, false) => quote! {{
                let __i: [i32; 4] = ::core::mem::transmute(#idx);
                let __g = [*#base.add(__i[0] as usize), *#base.add(__i[1] as usize), *#base.add(__i[2] as usize), *#base.add(__i[3] as usize)];
                vld1q_f32(__g.as_ptr())
            }},
            (Target::Neon, true) => quote! {{
                let __i: [i32; 4] = ::core::mem::transmute(#idx);
                let __g = [*#base.add(__i[0] as usize), *#base.add(__i[1] as usize), *#base.add(__i[2] as usize), *#base.add(__i[3] as usize)];
                vld1q_s32(__g.as_ptr())
            }},
            _ => unreachable!("gathers are generated for the batched targets"),
        }
    }

    /// Every lane's entry `idx` of a table of up to 32 entries held in one or two registers
    /// (AVX-512 only: one full-width permute).
    pub fn lookup(self, table: &[T], idx: T, int: bool) -> T {
        match (self, table, int) {
            (Target::Avx512, [a], false) => quote! { _mm512_permutexvar_ps(#idx, #a) },
            (Target::Avx512, [a], true) => quote! { _mm512_permutexvar_epi32(#idx, #a) },
            (Target::Avx512, [a, b], false) => quote! { _mm512_permutex2var_ps(#a, #idx, #b) },
            (Target::Avx512, [a, b], true) => quote! { _mm512_permutex2var_epi32(#a, #idx, #b) },
            _ => unreachable!("register table lookups are generated for AVX-512 with up to two registers"),
        }
    }

    /// Two i32 vectors of i16-range values packed as (low, high) i16 pairs per 32-bit lane.
    pub fn pack_pairs(self, lo: T, hi: T) -> T {
        match self {
            Target::Avx512 => quote! {
                _mm512_or_si512(_mm512_and_si512(#lo, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(#hi, 16))
            },
            Target::Avx2 => quote! {
                _mm256_or_si256(_mm256_and_si256(#lo, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(#hi, 16))
            },
            _ => unreachable!("pairs are packed on x86"),
        }
    }

    /// `acc + Σ` of the pairwise products of the i16 pairs in `pairs` and the pair `w` (an i32
    /// expression holding two i16), lane by lane.
    pub fn pair_dot(self, acc: T, pairs: T, w: T, vnni: bool) -> T {
        match (self, vnni) {
            (Target::Avx512, true) => quote! { _mm512_dpwssd_epi32(#acc, #pairs, _mm512_set1_epi32(#w)) },
            (Target::Avx512, false) => {
                quote! { _mm512_add_epi32(#acc, _mm512_madd_epi16(#pairs, _mm512_set1_epi32(#w))) }
            }
            (Target::Avx2, _) => {
                quote! { _mm256_add_epi32(#acc, _mm256_madd_epi16(#pairs, _mm256_set1_epi32(#w))) }
            }
            (Target::Sse, _) => quote! { _mm_add_epi32(#acc, _mm_madd_epi16(#pairs, _mm_set1_epi32(#w))) },
            _ => unreachable!("pair dot products on x86"),
        }
    }

    /// A scheduling fence over the vector variables `vars` (no instruction): an empty `asm!`
    /// that takes and gives back each of them, ordered after every earlier fence. Values made
    /// from its outputs cannot be computed before it, so code split by fences runs in the order
    /// written; the register allocator sees at most the live values of one part at a time.
    pub fn pin(self, vars: &[Ident]) -> T {
        let class = match self {
            Target::Avx512 => quote! { zmm_reg },
            Target::Avx2 => quote! { ymm_reg },
            Target::Sse => quote! { xmm_reg },
            Target::Neon => quote! { vreg },
            Target::Scalar => return quote! {},
        };
        let template: String = (0..vars.len()).map(|i| format!(" {{{i}}}")).collect();
        let template = format!("/*{template} */");
        quote! { ::core::arch::asm!(#template, #(inout(#class) #vars,)* options(nostack, preserves_flags)); }
    }

    /// The all-zero integer vector (x86).
    pub fn zero_bits(self) -> T {
        match self {
            Target::Sse => quote! { _mm_setzero_si128() },
            Target::Avx2 => quote! { _mm256_setzero_si256() },
            Target::Avx512 => quote! { _mm512_setzero_si512() },
            _ => unreachable!("integer zero vectors by name on x86"),
        }
    }

    /// A vector of the constants `values`, lane 0 first (AVX-512).
    pub fn vector_of(self, values: &[f32]) -> T {
        match self {
            Target::Avx512 => quote! { _mm512_setr_ps(#(#values),*) },
            _ => unreachable!("constant vectors by value on AVX-512"),
        }
    }

    /// Lane `i` = `table[idx[i] mod lanes]` (AVX-512's `vpermps`).
    pub fn permute(self, idx: T, table: T) -> T {
        match self {
            Target::Avx512 => quote! { _mm512_permutexvar_ps(#idx, #table) },
            _ => unreachable!("lane permutes on AVX-512"),
        }
    }

    /// `p · 2^floor(e)` per lane over the whole float range (AVX-512's `vscalefps`).
    pub fn scalef(self, p: T, e: T) -> T {
        match self {
            Target::Avx512 => quote! { _mm512_scalef_ps(#p, #e) },
            _ => unreachable!("vscalefps on AVX-512"),
        }
    }

    /// NEON: `acc + w · x[lane]` for f32 vectors, `x_lane` naming the vector and the lane (`x[r],
    /// l`); without `acc` the product alone.
    pub fn fma_by_lane(self, acc: Option<T>, w: T, x_lane: T) -> T {
        assert_eq!(self, Target::Neon, "by-lane products on NEON");
        match acc {
            Some(acc) => quote! { vfmaq_laneq_f32(#acc, #w, #x_lane) },
            None => quote! { vmulq_laneq_f32(#w, #x_lane) },
        }
    }

    /// `acc + x · s`, the scalar `s` multiplying every lane (NEON's `vfmaq_n_f32`; elsewhere an
    /// FMA with `s` broadcast).
    pub fn fma_by_scalar(self, acc: T, x: T, s: T) -> T {
        match self {
            Target::Neon => quote! { vfmaq_n_f32(#acc, #x, #s) },
            _ => self.fma(x, self.splat(s), acc),
        }
    }

    /// NEON: `acc + x · s` on i16 lanes widened to i32 (`vmlal_n_s16`).
    pub fn widen_mac_by_scalar(self, acc: T, x: T, s: T) -> T {
        assert_eq!(self, Target::Neon, "widening products on NEON");
        quote! { vmlal_n_s16(#acc, #x, #s) }
    }

    /// NEON: `acc + (the four i16 at p) · x[lane]` widened to i32, `x_lane` naming the vector and
    /// the lane; without `acc` the product alone (`vmull_lane_s16`, `vmlal_lane_s16`).
    pub fn widen_mac_by_lane(self, acc: Option<T>, p: T, x_lane: T) -> T {
        assert_eq!(self, Target::Neon, "widening products on NEON");
        match acc {
            Some(acc) => quote! { vmlal_lane_s16(#acc, vld1_s16(#p), #x_lane) },
            None => quote! { vmull_lane_s16(vld1_s16(#p), #x_lane) },
        }
    }

    /// NEON: i32 lanes narrowed to i16 (`vmovn_s32`).
    pub fn narrow_i16(self, v: T) -> T {
        assert_eq!(self, Target::Neon, "narrowing on NEON");
        quote! { vmovn_s32(#v) }
    }

    pub fn zero_i32(self) -> T {
        self.splat_i32(quote! { 0i32 })
    }
}

/// A two-input shuffle of the row matvecs' transpose-and-add trees ([`Target::shuffle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shuffle {
    /// `unpacklo_ps` / `unpackhi_ps`: interleaved floats of each 128-bit group.
    UnpackPs,
    /// The same on pairs of floats (`unpacklo_pd` / `unpackhi_pd`).
    UnpackPd,
    /// AVX-512's `shuffle_f32x4` 0x88 / 0xDD: the even then the odd 128-bit groups of each input.
    Quarters,
    /// AVX2's `permute2f128` 0x20 / 0x31: the low then the high halves of both inputs.
    Halves,
}

impl Shuffle {
    /// What the two outputs' lanes hold, for inputs whose lanes hold `a` and `b`.
    pub fn lanes(self, a: &[usize], b: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let l = a.len();
        let both = |f: &dyn Fn(usize, bool) -> usize| -> (Vec<usize>, Vec<usize>) {
            (
                (0..l).map(|i| f(i, false)).collect(),
                (0..l).map(|i| f(i, true)).collect(),
            )
        };
        match self {
            Shuffle::UnpackPs => both(&|i, hi| {
                let (g, k, o) = (i / 4 * 4, i % 4, if hi { 2 } else { 0 });
                if k % 2 == 0 {
                    a[g + o + k / 2]
                } else {
                    b[g + o + k / 2]
                }
            }),
            Shuffle::UnpackPd => both(&|i, hi| {
                let (g, k, o) = (i / 4 * 4, i % 4, if hi { 2 } else { 0 });
                if k < 2 { a[g + o + k] } else { b[g + o + k - 2] }
            }),
            Shuffle::Quarters => both(&|i, hi| {
                let sel = if hi { [1, 3, 1, 3] } else { [0, 2, 0, 2] };
                let (g, k) = (i / 4, i % 4);
                let src = if g < 2 { a } else { b };
                src[sel[g] * 4 + k]
            }),
            Shuffle::Halves => both(&|i, hi| {
                let o = if hi { 4 } else { 0 };
                if i < 4 { a[o + i] } else { b[o + i - 4] }
            }),
        }
    }
}

impl Target {
    /// The shuffles of the target's transpose-and-add tree, first to last (x86 only).
    pub fn transpose_shuffles(self) -> &'static [Shuffle] {
        match self {
            Target::Avx512 => &[
                Shuffle::UnpackPs,
                Shuffle::UnpackPd,
                Shuffle::Quarters,
                Shuffle::Quarters,
            ],
            Target::Avx2 => &[Shuffle::UnpackPs, Shuffle::UnpackPd, Shuffle::Halves],
            _ => unreachable!("row matvecs are generated for x86 only"),
        }
    }

    /// Both outputs of `s` on `a` and `b`.
    pub fn shuffle(self, s: Shuffle, a: T, b: T) -> (T, T) {
        match (self, s) {
            (Target::Avx512, Shuffle::UnpackPs) => (
                quote! { _mm512_unpacklo_ps(#a, #b) },
                quote! { _mm512_unpackhi_ps(#a, #b) },
            ),
            (Target::Avx512, Shuffle::UnpackPd) => (
                quote! { _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(#a), _mm512_castps_pd(#b))) },
                quote! { _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(#a), _mm512_castps_pd(#b))) },
            ),
            (Target::Avx512, Shuffle::Quarters) => (
                quote! { _mm512_shuffle_f32x4(#a, #b, 0x88) },
                quote! { _mm512_shuffle_f32x4(#a, #b, 0xDD) },
            ),
            (Target::Avx2, Shuffle::UnpackPs) => (
                quote! { _mm256_unpacklo_ps(#a, #b) },
                quote! { _mm256_unpackhi_ps(#a, #b) },
            ),
            (Target::Avx2, Shuffle::UnpackPd) => (
                quote! { _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(#a), _mm256_castps_pd(#b))) },
                quote! { _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(#a), _mm256_castps_pd(#b))) },
            ),
            (Target::Avx2, Shuffle::Halves) => (
                quote! { _mm256_permute2f128_ps(#a, #b, 0x20) },
                quote! { _mm256_permute2f128_ps(#a, #b, 0x31) },
            ),
            _ => unreachable!("{s:?} is not a shuffle of {self:?}'s trees"),
        }
    }
}
