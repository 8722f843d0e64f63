//! Every generated CUDA kernel compiles with NVRTC to PTX for sm_90, and `ptxas` assembles it
//! without spilling registers to local memory. Needs no GPU: NVRTC (libnvrtc.so on
//! LD_LIBRARY_PATH) and `ptxas` (on PATH, or MICROGPT_PTXAS), e.g. from the nvidia-cuda-nvrtc and
//! nvidia-cuda-nvcc wheels. Outside CI the test skips with a message when they are missing; in
//! CI (`CI` set) it fails.
#![cfg(feature = "cuda")]

use microgpt_cuda::{NVRTC_OPTIONS, host, render};
use microgpt_model::Shape;
use std::path::PathBuf;
use std::process::Command;

fn missing(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI needs {what}");
    }
    eprintln!("skipping the PTX checks: {what}");
}

/// What `ptxas -v` says of one function (kernels and the device functions they call).
#[derive(Debug, PartialEq)]
struct Resources {
    function: String,
    /// Kernels only.
    registers: Option<u32>,
    stack: u32,
    /// Spill stores plus spill loads (bytes).
    spills: u32,
}

fn resources(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    let mut entry = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            entry = rest.split('\'').next().unwrap_or("").to_string();
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            out.push(Resources {
                function: rest.trim().to_string(),
                registers: None,
                stack: 0,
                spills: 0,
            });
        } else if line.contains("bytes stack frame")
            && let Some(last) = out.last_mut()
        {
            // "N bytes stack frame, N bytes spill stores, N bytes spill loads"
            let n: Vec<u32> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            last.stack = n.first().copied().unwrap_or(0);
            last.spills = n.get(1).copied().unwrap_or(0) + n.get(2).copied().unwrap_or(0);
        } else if let Some(rest) = line.split("Used ").nth(1)
            && let Some(r) = out.iter_mut().rev().find(|r| r.function == entry)
        {
            r.registers = rest.split(' ').next().and_then(|n| n.parse().ok());
        }
    }
    out
}

#[test]
fn every_kernel_assembles_for_sm_90_without_spills() {
    if let Err(e) = host::nvrtc_present() {
        return missing(&e);
    }
    let ptxas = std::env::var_os("MICROGPT_PTXAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "ptxas".into());
    if Command::new(&ptxas).arg("--version").output().is_err() {
        return missing(&format!("{} (the CUDA assembler)", ptxas.display()));
    }
    let dir = std::env::temp_dir().join(format!("microgpt-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for shape in [
        Shape::default(),
        Shape::parse("embd=32,layers=2,mlp=128").unwrap(),
    ] {
        let source = render(&shape);
        let ptx = host::ptx(&shape, "compute_90").unwrap_or_else(|e| panic!("{shape}: {e}"));
        // Compiled with the options the source names: exponentials and divisions flush
        // subnormals (`--ftz=true`), which leaves no non-flushing special function.
        assert!(
            source
                .text
                .contains(&format!("// NVRTC options: {}", NVRTC_OPTIONS.join(" ")))
        );
        for (flushing, plain) in [
            ("ex2.approx.ftz.f32", "ex2.approx.f32"),
            ("div.approx.ftz.f32", "div.approx.f32"),
        ] {
            assert!(ptx.contains(flushing), "{shape}: no {flushing} in the PTX");
            assert!(!ptx.contains(plain), "{shape}: {plain} in the PTX");
        }
        let file = dir.join(format!("embd{}-layers{}.ptx", shape.embd, shape.layers));
        std::fs::write(&file, &ptx).unwrap();
        let out = Command::new(&ptxas)
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(dir.join("out.cubin"))
            .arg(&file)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shape}: ptxas failed:\n{log}");
        let found = resources(&log);
        for kernel in source.kernels() {
            let r = found
                .iter()
                .find(|r| r.function == kernel && r.registers.is_some())
                .unwrap_or_else(|| panic!("{shape}: ptxas reported nothing for {kernel}:\n{log}"));
            eprintln!(
                "{shape}: {kernel}: {} registers, {} bytes stack",
                r.registers.unwrap_or(0),
                r.stack
            );
        }
        for r in &found {
            assert_eq!(
                r.spills, 0,
                "{shape}: {} spills to local memory:\n{log}",
                r.function
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ptxas_log_parsing() {
    let log = "ptxas info    : Compiling entry function 'mg_streams' for 'sm_90'\n\
               ptxas info    : Function properties for mg_streams\n\
               \x20   16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n\
               ptxas info    : Used 255 registers, 400 bytes cmem[0]\n";
    assert_eq!(
        resources(log),
        vec![Resources {
            function: "mg_streams".into(),
            registers: Some(255),
            stack: 16,
            spills: 16
        }]
    );
}

/// NVRTC runs once per source and architecture in a process: the second compile of a shape is
/// the first one's PTX, and another architecture is compiled anew.
#[test]
fn each_source_is_compiled_once_per_architecture() {
    if let Err(e) = host::nvrtc_present() {
        return missing(&e);
    }
    // A shape no other test here compiles.
    let source = render(&Shape::parse("embd=8,heads=2,mlp=16").unwrap());
    assert!(!host::is_compiled(&source, "compute_90"));
    let first = host::compile(&source, "compute_90").unwrap().to_src();
    assert!(host::is_compiled(&source, "compute_90"));
    assert!(!host::is_compiled(&source, "compute_80"));
    assert_eq!(host::compile(&source, "compute_90").unwrap().to_src(), first);
    let other = host::compile(&source, "compute_80").unwrap().to_src();
    assert!(other.contains("sm_80") && first.contains("sm_90"));
}
