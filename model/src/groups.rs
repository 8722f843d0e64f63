//! Fusion groups: runs of consecutive ops that a renderer may render as one, found once over the
//! op list ([`Program::groups`]). Each renderer picks the kinds it fuses (and may add conditions
//! of its own, such as a register layout); none searches the op list for patterns itself.

use crate::{Buffer, Layout, Op, Program};
use std::ops::Range;

/// What a [`Group`] fuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fusion {
    /// `out = W·x; into += out`: a matvec and the residual add of its result.
    MatVecAdd,
    /// `h = W·x; h = relu(h)`: a matvec and the rectifier of its result.
    MatVecRelu,
    /// `h = U·x; h = relu(h); y = D·h`: the MLP, whose hidden vector is read nowhere else.
    Mlp,
    /// Two or more matvecs of one input by matrices of the same dimensions stored one after the
    /// other in the canonical layout (a layer's q, k and v), every output distinct from the input
    /// and from the others.
    SameInput,
}

/// A run of consecutive ops of one [`Fusion`] kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub fusion: Fusion,
    /// The ops' indices in the op list.
    pub ops: Range<usize>,
}

/// Every group of `ops`, by first op then kind: groups of different kinds overlap (an MLP holds a
/// matvec and its rectifier, and its down-projection with the next op is a matvec and its residual
/// add), groups of one kind do not (found from the left, a group's later ops start none).
pub(crate) fn find(layout: &Layout, ops: &[Op]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for at in 0..ops.len() {
        for fusion in [
            Fusion::MatVecAdd,
            Fusion::MatVecRelu,
            Fusion::Mlp,
            Fusion::SameInput,
        ] {
            let len = match fusion {
                Fusion::MatVecAdd => matvec_add(&ops[at..]),
                Fusion::MatVecRelu => matvec_relu(&ops[at..]),
                Fusion::Mlp => mlp(layout, &ops[at..]),
                Fusion::SameInput => same_input(layout, &ops[at..]),
            };
            let inside = |g: &Group| g.fusion == fusion && g.ops.contains(&at);
            if len > 0 && !groups.iter().any(inside) {
                groups.push(Group {
                    fusion,
                    ops: at..at + len,
                });
            }
        }
    }
    groups
}

fn matvec_add(ops: &[Op]) -> usize {
    match ops {
        [Op::MatVec { out, .. }, Op::Add { input, .. }, ..] if out == input => 2,
        _ => 0,
    }
}

fn matvec_relu(ops: &[Op]) -> usize {
    match ops {
        [Op::MatVec { out, .. }, Op::Relu { buf }, ..] if out == buf => 2,
        _ => 0,
    }
}

fn mlp(layout: &Layout, ops: &[Op]) -> usize {
    match *ops {
        [
            Op::MatVec {
                weight: up,
                input,
                out: hidden,
            },
            Op::Relu { buf },
            Op::MatVec {
                weight: down,
                input: h2,
                out,
            },
            ..,
        ] if buf == hidden
            && h2 == hidden
            && input != hidden
            && out != hidden
            && layout.tensor(up).rows == layout.tensor(down).cols
            && !read_before_written(&ops[3..], hidden) =>
        {
            3
        }
        _ => 0,
    }
}

/// Whether an op of `ops` reads `b` before one writes it.
fn read_before_written(ops: &[Op], b: Buffer) -> bool {
    for op in ops {
        if op.inputs().contains(&b) {
            return true;
        }
        if op.output() == b {
            return false;
        }
    }
    false
}

fn same_input(layout: &Layout, ops: &[Op]) -> usize {
    let [Op::MatVec { weight, input, out }, ..] = *ops else {
        return 0;
    };
    let first = layout.tensor(weight);
    let mut end = first.offset + first.len();
    let mut outs = vec![out];
    for op in &ops[1..] {
        let &Op::MatVec {
            weight: w,
            input: i,
            out: o,
        } = op
        else {
            break;
        };
        let t = layout.tensor(w);
        if i != input
            || o == input
            || outs.contains(&o)
            || (t.rows, t.cols) != (first.rows, first.cols)
            || t.offset != end
        {
            break;
        }
        outs.push(o);
        end += t.len();
    }
    if out == input || outs.len() < 2 {
        0
    } else {
        outs.len()
    }
}

impl Program {
    /// Every fusion group of the op list (see [`Fusion`]), by first op.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The ops of the group of kind `fusion` that starts at op `at`, if there is one.
    pub fn group(&self, fusion: Fusion, at: usize) -> Option<Range<usize>> {
        self.groups
            .iter()
            .find(|g| g.fusion == fusion && g.ops.start == at)
            .map(|g| g.ops.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Buffer, Shape};

    #[test]
    fn each_layer_has_its_q_k_v_its_mlp_and_two_residual_matvecs() {
        for shape in [Shape::DEFAULT, Shape::new(11, 5, 12, 3, 3, 20).unwrap()] {
            let p = Program::forward(shape);
            let count = |f| p.groups().iter().filter(|g| g.fusion == f).count();
            let l = shape.layers;
            assert_eq!(
                [
                    count(Fusion::SameInput),
                    count(Fusion::Mlp),
                    count(Fusion::MatVecRelu),
                    count(Fusion::MatVecAdd)
                ],
                [l, l, l, 2 * l],
                "{shape}"
            );
            for g in p.groups() {
                let ops = &p.ops()[g.ops.clone()];
                match g.fusion {
                    Fusion::SameInput => assert_eq!(
                        ops.iter().map(Op::output).collect::<Vec<_>>(),
                        [Buffer::Q, Buffer::K, Buffer::V]
                    ),
                    Fusion::Mlp => assert_eq!(ops[2].output(), Buffer::Proj),
                    Fusion::MatVecRelu => assert_eq!(ops[1], Op::Relu { buf: Buffer::Hidden }),
                    Fusion::MatVecAdd => assert!(matches!(ops[1], Op::Add { into: Buffer::X, .. })),
                }
            }
            let first_mlp = p.groups().iter().find(|g| g.fusion == Fusion::Mlp).unwrap();
            assert_eq!(
                p.group(Fusion::Mlp, first_mlp.ops.start),
                Some(first_mlp.ops.clone())
            );
            assert_eq!(p.group(Fusion::Mlp, 0), None);
        }
    }

    #[test]
    fn groups_are_found_only_where_their_conditions_hold() {
        let shape = Shape::DEFAULT;
        let layout = Layout::new(shape);
        let mv = |weight, out| Op::MatVec {
            weight,
            input: Buffer::Xn,
            out,
        };
        use crate::Param::*;
        // k before q: not adjacent in the layout's order.
        assert_eq!(
            same_input(&layout, &[mv(Wk(0), Buffer::K), mv(Wq(0), Buffer::Q)]),
            0
        );
        assert_eq!(
            same_input(
                &layout,
                &[mv(Wq(0), Buffer::Q), mv(Wk(0), Buffer::K), mv(Wq(0), Buffer::V)]
            ),
            2
        );
        // The same output twice ends the group.
        assert_eq!(
            same_input(&layout, &[mv(Wq(0), Buffer::Q), mv(Wk(0), Buffer::Q)]),
            0
        );
        // An MLP whose hidden vector is read after it is no MLP group.
        let up = Op::MatVec {
            weight: Fc1(0),
            input: Buffer::Xn,
            out: Buffer::Hidden,
        };
        let down = Op::MatVec {
            weight: Fc2(0),
            input: Buffer::Hidden,
            out: Buffer::Proj,
        };
        let relu = Op::Relu { buf: Buffer::Hidden };
        assert_eq!(mlp(&layout, &[up, relu, down]), 3);
        assert_eq!(mlp(&layout, &[up, relu, down, relu]), 0);
        // fc1 has other dimensions than v.
        assert_eq!(
            same_input(&layout, &[mv(Wv(0), Buffer::V), mv(Fc1(0), Buffer::Hidden)]),
            0
        );
    }
}
