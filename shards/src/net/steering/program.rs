//! The steering program, built as plain data: eBPF instructions for `BPF_PROG_TYPE_SK_REUSEPORT`
//! that read the steering key from a QUIC packet's destination connection ID and select the
//! socket the map holds for it. No toolchain is needed at build time, and the layout is
//! unit-tested.

use std::os::fd::RawFd;

/// One eBPF instruction, as the kernel reads it (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const FP: u8 = 10;

fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
fn and_imm(dst: u8, imm: i32) -> Insn {
    insn(0x57, dst, 0, 0, imm)
}
fn lsh_imm(dst: u8, imm: i32) -> Insn {
    insn(0x67, dst, 0, 0, imm)
}
fn or_reg(dst: u8, src: u8) -> Insn {
    insn(0x4f, dst, src, 0, 0)
}
fn load_byte(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x71, dst, src, off, 0)
}
fn store_word(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x63, dst, src, off, 0)
}
fn call(helper: Helper) -> Insn {
    insn(0x85, 0, 0, 0, helper as i32)
}
fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
fn map_fd_load(dst: u8, fd: RawFd) -> [Insn; 2] {
    // BPF_LD | BPF_IMM | BPF_DW with src = BPF_PSEUDO_MAP_FD: a 16-byte instruction.
    [insn(0x18, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}

/// Jumps are built with symbolic targets and resolved once the program is laid out.
enum Step {
    Op(Insn),
    Jump {
        cond: Cond,
        reg: u8,
        imm: i32,
        to: Label,
    },
    Here(Label),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Pass,
    ShortHeader,
    Select,
}

/// A jump to `to` when `reg` compares to `imm` as `cond` says.
fn jump(cond: Cond, reg: u8, imm: i32, to: Label) -> Step {
    Step::Jump { cond, reg, imm, to }
}

/// Kernel helper functions the program calls (`enum bpf_func_id`).
#[derive(Clone, Copy)]
enum Helper {
    SkbLoadBytes = 26,
    SkSelectReuseport = 82,
}

/// Jump opcodes: `BPF_JMP` with the condition, comparing a register with an immediate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cond {
    Always = 0x05,
    Equal = 0x15,
    NotEqual = 0x55,
    Below = 0xa5,
}
/// The UDP header precedes the QUIC packet in the program's view of the datagram.
const UDP_HEADER_LEN: i32 = 8;
const SK_PASS: i32 = 1;

/// The steering program for the map whose descriptor is `map_fd`.
///
/// Reads the first 8 bytes of the QUIC packet. A short header (first bit 0) carries the
/// destination ID from byte 1; a long header carries its length at byte 5 and the ID from byte
/// 6. The first two ID bytes are the key. Any failure returns `SK_PASS` without a selection, which
/// makes the kernel fall back to its hash.
pub fn program(map_fd: RawFd) -> Vec<Insn> {
    use Label::*;
    let mut steps = vec![
        Step::Op(mov_reg(R6, R1)),
        Step::Op(mov_reg(R1, R6)),
        Step::Op(mov_imm(R2, UDP_HEADER_LEN)),
        Step::Op(mov_reg(R3, FP)),
        Step::Op(add_imm(R3, -8)),
        Step::Op(mov_imm(R4, 8)),
        Step::Op(call(Helper::SkbLoadBytes)),
        jump(Cond::NotEqual, R0, 0, Pass),
        Step::Op(load_byte(R2, FP, -8)),
        Step::Op(and_imm(R2, 0x80)),
        jump(Cond::Equal, R2, 0, ShortHeader),
        // Long header: destination ID length, then the ID.
        Step::Op(load_byte(R4, FP, -3)),
        jump(Cond::Below, R4, 2, Pass),
        Step::Op(load_byte(R5, FP, -2)),
        Step::Op(lsh_imm(R5, 8)),
        Step::Op(load_byte(R7, FP, -1)),
        Step::Op(or_reg(R5, R7)),
        jump(Cond::Always, 0, 0, Select),
        Step::Here(ShortHeader),
        Step::Op(load_byte(R5, FP, -7)),
        Step::Op(lsh_imm(R5, 8)),
        Step::Op(load_byte(R7, FP, -6)),
        Step::Op(or_reg(R5, R7)),
        Step::Here(Select),
        Step::Op(store_word(FP, -16, R5)),
        Step::Op(mov_reg(R1, R6)),
    ];
    for op in map_fd_load(R2, map_fd) {
        steps.push(Step::Op(op));
    }
    steps.extend([
        Step::Op(mov_reg(R3, FP)),
        Step::Op(add_imm(R3, -16)),
        Step::Op(mov_imm(R4, 0)),
        Step::Op(call(Helper::SkSelectReuseport)),
        Step::Here(Pass),
        Step::Op(mov_imm(R0, SK_PASS)),
        Step::Op(exit()),
    ]);
    assemble(&steps)
}

fn assemble(steps: &[Step]) -> Vec<Insn> {
    let mut positions = Vec::new();
    let mut at = 0i16;
    for step in steps {
        match step {
            Step::Here(label) => positions.push((*label, at)),
            _ => at += 1,
        }
    }
    let position = |label: Label| {
        positions
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, at)| *at)
            .expect("every jump target is placed")
    };
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Op(op) => out.push(*op),
            Step::Jump { cond, reg, imm, to } => {
                let next = out.len() as i16 + 1;
                out.push(insn(*cond as u8, *reg, 0, position(*to) - next, *imm));
            }
            Step::Here(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(program: &[Insn], at: usize) -> usize {
        (at as i64 + 1 + i64::from(program[at].off)) as usize
    }

    #[test]
    fn jumps_land_on_their_labels() {
        let p = program(7);
        // Every conditional jump and the unconditional one resolve inside the program.
        let jumps: Vec<usize> = (0..p.len())
            .filter(|&i| {
                [Cond::Always, Cond::Equal, Cond::NotEqual, Cond::Below]
                    .iter()
                    .any(|c| p[i].code == *c as u8)
            })
            .collect();
        assert_eq!(jumps.len(), 4);
        let pass = p.len() - 2;
        assert_eq!(p[pass], mov_imm(R0, SK_PASS));
        assert_eq!(target(&p, jumps[0]), pass, "load failure passes");
        assert_eq!(target(&p, jumps[2]), pass, "short long-header ID passes");
        // The short-header branch starts by reading ID byte 0 (packet byte 1).
        assert_eq!(p[target(&p, jumps[1])], load_byte(R5, FP, -7));
        // The long-header branch joins at the key store.
        assert_eq!(p[target(&p, jumps[3])], store_word(FP, -16, R5));
        assert_eq!(p[p.len() - 1], exit());
    }

    #[test]
    fn map_descriptor_is_a_wide_load() {
        let p = program(42);
        let at = p.iter().position(|i| i.code == 0x18).unwrap();
        assert_eq!(p[at].imm, 42);
        assert_eq!(p[at].regs >> 4, 1, "BPF_PSEUDO_MAP_FD");
        assert_eq!(p[at + 1], insn(0, 0, 0, 0, 0));
    }
}
