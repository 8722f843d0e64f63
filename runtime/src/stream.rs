//! The generation loops (docs/spec.md#generation-loops), shared by every variant: the benchmark
//! stream and names mode. A variant supplies one step: `(tok, pos, r) -> next`, the forward pass at `(tok, pos)`
//! followed by a draw with the uniform `r`.

use crate::sampler::XorShift32;
use microgpt_model::Shape;

/// One benchmark stream: the token and position of the next step and the RNG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    pub tok: usize,
    pub pos: usize,
    pub rng: XorShift32,
    bos: usize,
    block: usize,
}

impl Stream {
    /// A stream at BOS, position 0, with the RNG seeded by `seed`.
    pub fn new(shape: &Shape, seed: u32) -> Stream {
        Stream {
            tok: shape.bos(),
            pos: 0,
            rng: XorShift32::new(seed),
            bos: shape.bos(),
            block: shape.block,
        }
    }

    /// Applies the result of a step: after `next`, reset to BOS at position 0 when `next` is BOS
    /// or the block is full (the KV cache is then logically cleared), else feed `next` back.
    #[inline(always)]
    pub fn advance(&mut self, next: usize) {
        (self.tok, self.pos) = next_input(self.bos, self.block, self.pos, next);
    }

    /// Runs `tokens` steps, every step counting as one token. Returns a checksum of the drawn
    /// tokens (so no work can be optimised away, and two runs can be compared cheaply).
    #[inline(always)]
    pub fn run<S: FnMut(usize, usize, f32) -> usize>(&mut self, tokens: u64, mut step: S) -> u64 {
        let mut sum = 0u64;
        for _ in 0..tokens {
            let r = self.rng.uniform();
            let next = step(self.tok, self.pos, r);
            sum = sum.wrapping_mul(31).wrapping_add(next as u64);
            self.advance(next);
        }
        sum
    }
}

/// The input of the step after drawing `next` at position `pos`: BOS at position 0 when `next`
/// is BOS or the block is full, else `next` at `pos + 1`. Written without branches, so that a
/// loop over many streams' arrays compiles to conditional moves.
#[inline(always)]
pub fn next_input<N>(bos: N, block: N, pos: N, next: N) -> (N, N)
where
    N: Copy + PartialEq + std::ops::Add<Output = N> + From<u8>,
{
    let one = N::from(1);
    let reset = (next == bos) | (pos + one == block);
    (
        if reset { bos } else { next },
        if reset { N::from(0) } else { pos + one },
    )
}

/// The seed of stream `index` of a multi-stream run started with `seed`: stream 0 gets `seed`
/// itself (so it reproduces the single-stream run), every other stream a splitmix32 hash of
/// `(seed, index)`, never 0 (xorshift32's fixed point).
pub fn stream_seed(seed: u32, index: usize) -> u32 {
    if index == 0 {
        return seed;
    }
    let mut z = seed.wrapping_add((index as u32).wrapping_mul(0x9E37_79B9));
    z = (z ^ (z >> 16)).wrapping_mul(0x85EB_CA6B);
    z = (z ^ (z >> 13)).wrapping_mul(0xC2B2_AE35);
    z ^= z >> 16;
    if z == 0 { 0x9E37_79B9 } else { z }
}

/// Names mode: `count` names, each from BOS at position 0 with a cleared cache, at most `block`
/// steps, stopping at BOS; the RNG carries over from one name to the next. Returns token ids.
pub fn generate_names<S: FnMut(usize, usize, f32) -> usize>(
    shape: &Shape,
    count: usize,
    seed: u32,
    mut step: S,
) -> Vec<Vec<usize>> {
    let mut rng = XorShift32::new(seed);
    (0..count)
        .map(|_| {
            let mut name = Vec::new();
            let mut tok = shape.bos();
            for pos in 0..shape.block {
                let next = step(tok, pos, rng.uniform());
                if next == shape.bos() {
                    break;
                }
                name.push(next);
                tok = next;
            }
            name
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_resets_at_bos_and_at_block() {
        let shape = Shape::new(5, 3, 4, 1, 1, 4).unwrap(); // BOS = 4, block = 3
        let mut s = Stream::new(&shape, 1);
        let mut seen = Vec::new();
        // A step that always answers 0: positions 0,1,2 then a reset at the block end.
        s.run(7, |tok, pos, _| {
            seen.push((tok, pos));
            0
        });
        assert_eq!(seen, [(4, 0), (0, 1), (0, 2), (4, 0), (0, 1), (0, 2), (4, 0)]);
        // BOS resets immediately.
        let mut s = Stream::new(&shape, 1);
        let mut seen = Vec::new();
        let mut answers = [2, 4, 1, 3].into_iter();
        s.run(4, |tok, pos, _| {
            seen.push((tok, pos));
            answers.next().unwrap()
        });
        assert_eq!(seen, [(4, 0), (2, 1), (4, 0), (1, 1)]);
    }

    #[test]
    fn stream_draws_one_uniform_per_token() {
        let shape = Shape::DEFAULT;
        let mut s = Stream::new(&shape, 42);
        let mut rs = Vec::new();
        s.run(3, |_, _, r| {
            rs.push(r);
            0
        });
        let mut rng = XorShift32::new(42);
        assert_eq!(rs, [rng.uniform(), rng.uniform(), rng.uniform()]);
        assert_eq!(s.rng, rng);
    }

    #[test]
    fn stream_seeds_are_distinct_and_never_zero() {
        assert_eq!(stream_seed(42, 0), 42);
        let seeds: Vec<u32> = (0..1000).map(|i| stream_seed(42, i)).collect();
        let mut sorted = seeds.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
        assert!(seeds.iter().all(|&s| s != 0));
        assert_ne!(stream_seed(1, 5), stream_seed(2, 5));
    }

    #[test]
    fn names_stop_at_bos_and_at_block_and_share_the_rng() {
        let shape = Shape::new(5, 3, 4, 1, 1, 4).unwrap();
        let mut calls = Vec::new();
        // First name: 1, 2, BOS. Second: never BOS, so block (3) letters.
        let mut answers = [1, 2, 4, 0, 0, 0].into_iter();
        let names = generate_names(&shape, 2, 9, |tok, pos, r| {
            calls.push((tok, pos, r));
            answers.next().unwrap()
        });
        assert_eq!(names, [vec![1, 2], vec![0, 0, 0]]);
        let positions: Vec<_> = calls.iter().map(|c| (c.0, c.1)).collect();
        assert_eq!(positions, [(4, 0), (1, 1), (2, 2), (4, 0), (0, 1), (0, 2)]);
        let mut rng = XorShift32::new(9);
        let rs: Vec<f32> = (0..6).map(|_| rng.uniform()).collect();
        assert_eq!(calls.iter().map(|c| c.2).collect::<Vec<_>>(), rs);
    }
}
