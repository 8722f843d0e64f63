//! The CUDA host side (cargo feature `cuda`): NVRTC compiles [`super::render`]'s source, the
//! driver API launches it. Both libraries are loaded at run time: when either is missing, or no
//! device answers, every entry point returns a one-line reason instead of panicking.

use super::{CudaSource, Launch, NAIVE, NVRTC_OPTIONS, device_floats, render};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use microgpt_model::Shape;
use microgpt_runtime::sampler::Sampler;
use microgpt_runtime::stream::{Stream, stream_seed};
use microgpt_runtime::variant::{Precision, Settings, Variant, VariantInfo};
use microgpt_weights::Weights;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// Whether the NVRTC library can be loaded; the reason when not, naming a copy found where the
/// loader does not look, or under a name it does not try (CUDA 13's `libnvrtc.so.13`), if any.
pub fn nvrtc_present() -> Result<(), String> {
    // SAFETY: only tries to open the shared library; nothing is called through it.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    let on_path: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    let elsewhere: Vec<PathBuf> = NVRTC_DIRS.iter().map(PathBuf::from).collect();
    Err(match nvrtc_hint(&on_path, &elsewhere) {
        Some(hint) => format!("NVRTC not loadable: {hint}"),
        None => "NVRTC not found (libnvrtc.so: install the CUDA toolkit or the nvidia-cuda-nvrtc wheel and put its lib/ on LD_LIBRARY_PATH)".into(),
    })
}

/// Where CUDA toolkits usually put NVRTC, besides `LD_LIBRARY_PATH`.
const NVRTC_DIRS: [&str; 5] = [
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/local/cuda/targets/sbsa-linux/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
];

/// Whether the loader is asked for NVRTC under this file name (cudarc's candidates, for the
/// CUDA version this build targets).
fn nvrtc_name_loadable(name: &str) -> bool {
    cudarc::get_lib_name_candidates("nvrtc").iter().any(|n| n == name)
}

/// What to do about the first `libnvrtc.so*` in the folders `on_path` (those of
/// `LD_LIBRARY_PATH`) and `elsewhere`, when the loader found none: put its folder on
/// `LD_LIBRARY_PATH`, or give it a name the loader tries.
fn nvrtc_hint(on_path: &[PathBuf], elsewhere: &[PathBuf]) -> Option<String> {
    let in_folders = |dirs: &[PathBuf], listed: bool| {
        dirs.iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libnvrtc.so"))
            })
            .map(move |p| (p, listed))
            .collect::<Vec<_>>()
    };
    let mut found = in_folders(on_path, true);
    found.extend(in_folders(elsewhere, false));
    // A name the loader tries first, then the shortest (libnvrtc.so.13 before libnvrtc.so.13.0.88).
    found.sort_by_key(|(p, _)| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        (!nvrtc_name_loadable(name), name.len())
    });
    let (lib, listed) = found.first()?;
    let name = lib.file_name()?.to_str()?;
    let dir = lib.parent()?.display();
    Some(match (nvrtc_name_loadable(name), listed) {
        (true, true) => format!(
            "found {} on LD_LIBRARY_PATH, but it does not load (another architecture, or a broken file?)",
            lib.display()
        ),
        (true, false) => format!(
            "found {}, but its folder is not searched: put {dir} on LD_LIBRARY_PATH",
            lib.display()
        ),
        (false, _) => format!(
            "found {}, a name this build does not try: link it as libnvrtc.so in a folder on LD_LIBRARY_PATH, beside its own folder (mkdir -p /tmp/nvrtc && ln -sf {} /tmp/nvrtc/libnvrtc.so && export LD_LIBRARY_PATH=/tmp/nvrtc:{dir}:$LD_LIBRARY_PATH)",
            lib.display(),
            lib.display()
        ),
    })
}

/// Whether the driver library can be loaded; the reason when not.
pub fn driver_present() -> Result<(), String> {
    // SAFETY: as in `nvrtc_present`.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err("no CUDA driver (libcuda.so not found)".into())
    }
}

/// PTX already made in this process: (architecture, source text, PTX).
static COMPILED: Mutex<Vec<(String, String, Ptx)>> = Mutex::new(Vec::new());

/// `then` of the PTX already made for `source` and `arch`, if any.
fn compiled_before<T>(source: &CudaSource, arch: &str, then: impl FnOnce(&Ptx) -> T) -> Option<T> {
    let list = COMPILED.lock().unwrap_or_else(PoisonError::into_inner);
    list.iter()
        .find(|(a, text, _)| a == arch && *text == source.text)
        .map(|(_, _, ptx)| then(ptx))
}

/// Whether [`compile`] has already made the PTX of `source` for `arch` in this process.
pub fn is_compiled(source: &CudaSource, arch: &str) -> bool {
    compiled_before(source, arch, |_| ()).is_some()
}

/// Compiles `source` to PTX for `arch` (e.g. `compute_90`). NVRTC runs once per source and
/// architecture in a process: it takes seconds, more at larger shapes, and every CUDA variant of
/// a shape loads the same source.
pub fn compile(source: &CudaSource, arch: &str) -> Result<Ptx, String> {
    nvrtc_present()?;
    if let Some(ptx) = compiled_before(source, arch, Ptx::clone) {
        return Ok(ptx);
    }
    let opts = CompileOptions {
        options: std::iter::once(format!("--gpu-architecture={arch}"))
            .chain(NVRTC_OPTIONS.map(String::from))
            .collect(),
        name: Some("microgpt.cu".into()),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(&source.text, opts).map_err(|e| format!("NVRTC: {e}"))?;
    COMPILED.lock().unwrap_or_else(PoisonError::into_inner).push((
        arch.to_string(),
        source.text.clone(),
        ptx.clone(),
    ));
    Ok(ptx)
}

/// The PTX of `shape`'s kernels for `arch`, as text.
pub fn ptx(shape: &Shape, arch: &str) -> Result<String, String> {
    Ok(compile(&render(shape), arch)?.to_src())
}

/// The device's energy counter through NVML (`libnvidia-ml.so.1`, loaded at run time):
/// `nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver loaded (Volta and later).
pub struct Nvml {
    _lib: libloading::Library,
    energy: unsafe extern "C" fn(Device, *mut u64) -> i32,
    device: Device,
}

/// An `nvmlDevice_t`.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Device(*mut std::ffi::c_void);

// SAFETY: NVML is thread-safe (its documentation says every call may be made from any thread);
// the handle is an opaque token valid until shutdown, which this program never calls.
unsafe impl Send for Nvml {}

impl Nvml {
    /// The NVML handle of the device with this CUDA UUID, or why not.
    pub fn open(uuid: &[u8; 16]) -> Result<Nvml, String> {
        // SAFETY: loading NVML runs no code of ours; its initialisers are the driver's.
        let lib =
            unsafe { libloading::Library::new("libnvidia-ml.so.1") }.map_err(|e| format!("NVML: {e}"))?;
        let name = format!(
            "GPU-{}-{}-{}-{}-{}\0",
            hex(&uuid[0..4]),
            hex(&uuid[4..6]),
            hex(&uuid[6..8]),
            hex(&uuid[8..10]),
            hex(&uuid[10..16])
        );
        // SAFETY: the signatures are NVML's (nvml.h): nvmlReturn_t nvmlInit_v2(void);
        // nvmlDeviceGetHandleByUUID(const char*, nvmlDevice_t*);
        // nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t, unsigned long long*).
        unsafe {
            let init: libloading::Symbol<unsafe extern "C" fn() -> i32> =
                lib.get(b"nvmlInit_v2\0").map_err(|e| format!("NVML: {e}"))?;
            let by_uuid: libloading::Symbol<
                unsafe extern "C" fn(*const std::ffi::c_char, *mut Device) -> i32,
            > = lib
                .get(b"nvmlDeviceGetHandleByUUID\0")
                .map_err(|e| format!("NVML: {e}"))?;
            let energy: libloading::Symbol<unsafe extern "C" fn(Device, *mut u64) -> i32> = lib
                .get(b"nvmlDeviceGetTotalEnergyConsumption\0")
                .map_err(|e| format!("NVML: {e}"))?;
            let energy = *energy;
            let status = init();
            if status != 0 {
                return Err(format!("NVML: nvmlInit_v2 returned {status}"));
            }
            let mut device = Device(std::ptr::null_mut());
            let status = by_uuid(name.as_ptr().cast(), &mut device);
            if status != 0 {
                return Err(format!(
                    "NVML: no device {} ({status})",
                    name.trim_end_matches('\0')
                ));
            }
            let nvml = Nvml {
                _lib: lib,
                energy,
                device,
            };
            nvml.joules().ok_or("NVML: this device has no energy counter")?;
            Ok(nvml)
        }
    }

    /// The counter, in joules.
    pub fn joules(&self) -> Option<f64> {
        let mut mj = 0u64;
        // SAFETY: `energy` is the symbol loaded from `_lib`, which lives as long as `self`;
        // `device` came from NVML.
        let status = unsafe { (self.energy)(self.device, &mut mj) };
        (status == 0).then_some(mj as f64 / 1000.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The device the CUDA variants run on, and what the bench prints about it.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub name: String,
    pub sms: u32,
    /// SM clock and memory clock (MHz).
    pub clock_mhz: u32,
    pub memory_clock_mhz: u32,
    pub compute_capability: (i32, i32),
    pub shared_optin_bytes: usize,
    /// The energy counter, or why there is none.
    pub nvml: Result<Nvml, String>,
}

fn driver<T>(what: &str, r: Result<T, cudarc::driver::DriverError>) -> Result<T, String> {
    r.map_err(|e| format!("CUDA {what}: {e}"))
}

impl Gpu {
    /// Device 0, or why not.
    pub fn open() -> Result<Gpu, String> {
        driver_present()?;
        nvrtc_present()?;
        let count = driver("device count", CudaContext::device_count())?;
        if count < 1 {
            return Err("no CUDA device".into());
        }
        let ctx = driver("context", CudaContext::new(0))?;
        let attr = |a| driver("attribute", ctx.attribute(a));
        let sms = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let clock_mhz = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? as u32 / 1000;
        let memory_clock_mhz = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)? as u32 / 1000;
        let shared_optin_bytes =
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
        let uuid = driver("uuid", ctx.uuid())?;
        let uuid: [u8; 16] = uuid.bytes.map(|b| b as u8);
        Ok(Gpu {
            nvml: Nvml::open(&uuid),
            name: driver("name", ctx.name())?,
            compute_capability: driver("compute capability", ctx.compute_capability())?,
            stream: ctx.default_stream(),
            ctx,
            sms,
            clock_mhz,
            memory_clock_mhz,
            shared_optin_bytes,
        })
    }

    /// One line for the bench header.
    pub fn describe(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!(
            "{} (sm_{major}{minor}, {} SMs, {} MHz SM clock, {} MHz memory clock)",
            self.name, self.sms, self.clock_mhz, self.memory_clock_mhz
        )
    }

    fn load(&self, source: &CudaSource) -> Result<Arc<CudaModule>, String> {
        let (major, minor) = self.compute_capability;
        let ptx = compile(source, &format!("compute_{major}{minor}"))?;
        driver("module load", self.ctx.load_module(ptx))
    }
}

/// What a CUDA variant keeps on the device.
struct Loaded {
    gpu: Gpu,
    module: Arc<CudaModule>,
    source: CudaSource,
    weights: CudaSlice<f32>,
}

impl Loaded {
    fn new(weights: &Weights, settings: &Settings) -> Result<Loaded, String> {
        let gpu = Gpu::open()?;
        let source = render(weights.shape());
        let module = gpu.load(&source)?;
        let w = driver("upload", gpu.stream.clone_htod(&device_floats(weights)))?;
        let loaded = Loaded {
            gpu,
            module,
            source,
            weights: w,
        };
        let set = loaded.function("mg_set_temperature")?;
        let t = settings.temperature;
        let mut b = loaded.gpu.stream.launch_builder(&set);
        b.arg(&t);
        // SAFETY: mg_set_temperature(float) takes exactly this argument.
        driver("launch", unsafe { b.launch(one_thread()) })?;
        Ok(loaded)
    }

    fn function(&self, name: &str) -> Result<CudaFunction, String> {
        driver(name, self.module.load_function(name))
    }

    /// Lets `f` use `bytes` of dynamic shared memory.
    fn allow_shared(&self, f: &CudaFunction, bytes: usize) -> Result<(), String> {
        if bytes > self.gpu.shared_optin_bytes {
            return Err(format!(
                "needs {bytes} bytes of shared memory per block; the device allows {}",
                self.gpu.shared_optin_bytes
            ));
        }
        driver(
            "shared memory",
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            ),
        )
    }

    fn info(&self, name: &str, streams: usize, note: String) -> VariantInfo {
        let (major, minor) = self.gpu.compute_capability;
        let mut info = VariantInfo::new(name, "cuda", format!("sm_{major}{minor}"), Precision::F32);
        info.streams = streams;
        info.on_gpu = true;
        info.notes.push(format!("{}: {note}", self.gpu.describe()));
        if let Err(why) = &self.gpu.nvml {
            info.notes.push(format!("power not measured: {why}"));
        }
        info
    }

    fn joules(&self) -> Option<f64> {
        self.gpu.nvml.as_ref().ok()?.joules()
    }
}

/// Blocks of `threads` threads and `bytes` of shared memory that keep every one of `sms` SMs as
/// busy as the occupancy calculator allows (at least one block per SM).
fn fill_sms(f: &CudaFunction, threads: u32, bytes: usize, sms: u32) -> Result<u32, String> {
    let per_sm = driver(
        "occupancy",
        f.occupancy_max_active_blocks_per_multiprocessor(threads, bytes, None),
    )?;
    Ok(per_sm.max(1) * sms)
}

fn one_thread() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn one_warp() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A failure inside a variant's `step`/`run` (the trait has no error path): the device has gone
/// wrong after preparing fine, which nothing can recover from.
fn fail(e: String) -> ! {
    panic!("CUDA failed after a successful prepare: {e}")
}

/// The `cuda-*` variants' registry entries. Each declines with the reason when this machine has
/// no usable CUDA.
pub fn variants() -> Vec<microgpt_runtime::VariantSpec> {
    use microgpt_runtime::VariantSpec;
    let naive = VariantSpec::new(NAIVE, "cuda", Precision::F32, |w, s| {
        Ok(Box::new(Naive::new(w, s)?) as Box<dyn Variant>)
    });
    let persistent = Launch::ALL.map(|launch| {
        VariantSpec::new(launch.name(), "cuda", Precision::F32, move |w, s| {
            Ok(Box::new(Persistent::new(w, s, launch)?) as Box<dyn Variant>)
        })
    });
    std::iter::once(naive).chain(persistent).collect()
}

/// `cuda-naive`: one launch per op, the logits copied back and the token drawn on the host.
pub struct Naive {
    info: VariantInfo,
    dev: Loaded,
    ops: Vec<CudaFunction>,
    scratch: CudaSlice<f32>,
    sampler: Sampler,
    logits: Vec<f32>,
    stream: Stream,
}

impl Naive {
    pub fn new(weights: &Weights, settings: &Settings) -> Result<Naive, String> {
        let dev = Loaded::new(weights, settings)?;
        let ops: Vec<CudaFunction> = dev
            .source
            .op_kernels
            .iter()
            .map(|k| dev.function(k))
            .collect::<Result<_, _>>()?;
        let scratch = driver(
            "alloc",
            dev.gpu.stream.alloc_zeros::<f32>(dev.source.scratch_floats),
        )?;
        let shape = *weights.shape();
        let info = dev.info(
            NAIVE,
            1,
            format!(
                "{} launches of one warp per token, logits copied back, drawn on the host",
                ops.len()
            ),
        );
        Ok(Naive {
            info,
            dev,
            ops,
            scratch,
            sampler: Sampler::new(settings.temperature),
            logits: vec![0.0; shape.vocab],
            stream: Stream::new(&shape, microgpt_runtime::sampler::DEFAULT_SEED),
        })
    }

    fn forward(&mut self, tok: usize, pos: usize) -> Result<(), String> {
        let (tok, pos) = (tok as i32, pos as i32);
        for f in &self.ops {
            let mut b = self.dev.gpu.stream.launch_builder(f);
            b.arg(&self.dev.weights)
                .arg(&mut self.scratch)
                .arg(&tok)
                .arg(&pos);
            // SAFETY: every mg_op_<i> takes (const float* w, float* s, int tok, int pos); the
            // scratch holds MG_SCRATCH floats and tok, pos are in range (the stream's).
            driver("launch", unsafe { b.launch(one_warp()) })?;
        }
        let at = self.dev.source.logits_offset;
        let view = self.scratch.slice(at..at + self.logits.len());
        self.logits = driver("copy", self.dev.gpu.stream.clone_dtoh(&view))?;
        Ok(())
    }
}

impl Variant for Naive {
    fn info(&self) -> &VariantInfo {
        &self.info
    }

    fn shape(&self) -> Shape {
        self.dev.source.shape
    }

    fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize {
        self.forward(tok, pos).unwrap_or_else(|e| fail(e));
        self.sampler.draw(&self.logits, r)
    }

    fn logits(&self) -> Vec<f32> {
        self.logits.clone()
    }

    fn device_energy_joules(&self) -> Option<f64> {
        self.dev.joules()
    }

    fn reset(&mut self, seed: u32) {
        self.stream = Stream::new(&self.dev.source.shape, seed);
    }

    fn run(&mut self, tokens: u64) -> u64 {
        let mut stream = self.stream;
        let sum = stream.run(tokens, |t, p, r| self.step(t, p, r));
        self.stream = stream;
        sum
    }
}

/// The variants of every [`Launch`]: whole timed windows in one launch.
pub struct Persistent {
    info: VariantInfo,
    dev: Loaded,
    launch: Launch,
    run_fn: CudaFunction,
    step_fn: CudaFunction,
    config: LaunchConfig,
    streams: usize,
    /// (tok, pos, rng) per stream.
    state: CudaSlice<u32>,
    kv: CudaSlice<f32>,
    checksums: CudaSlice<u64>,
    /// The teacher-forced step's scratch (warp) or KV cache (thread), and its outputs.
    step_scratch: CudaSlice<f32>,
    step_logits: CudaSlice<f32>,
    step_next: CudaSlice<i32>,
    logits: Vec<f32>,
}

impl Persistent {
    pub fn new(weights: &Weights, settings: &Settings, launch: Launch) -> Result<Persistent, String> {
        let dev = Loaded::new(weights, settings)?;
        let src = &dev.source;
        let (run_name, step_name) = launch.kernels();
        let run_fn = dev.function(run_name)?;
        let step_fn = dev.function(step_name)?;
        let sms = dev.gpu.sms;
        // One warp, the whole window in one launch: `bytes` of dynamic shared memory.
        let one_warp = |bytes: usize, note: &str| -> Result<(LaunchConfig, usize, String), String> {
            dev.allow_shared(&run_fn, bytes)?;
            let config = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: bytes as u32,
            };
            Ok((config, 1, note.to_string()))
        };
        let (config, streams, note) = match launch {
            Launch::OneWarp => one_warp(
                src.persistent_shared_bytes(true),
                "one warp, the whole window in one launch, short vectors whole in every lane",
            )?,
            Launch::OneWarpTable => one_warp(
                src.persistent_shared_bytes(false),
                "one warp, the whole window in one launch, short vectors whole in every lane, each step from its row of the prefix table, weights and table through the read-only cache",
            )?,
            Launch::WarpPerStream => {
                // As many warps per block as shared memory allows, up to WARPS_PER_BLOCK.
                let warps = (1..=super::WARPS_PER_BLOCK)
                    .rev()
                    .find(|&k| src.shared_bytes(k) <= dev.gpu.shared_optin_bytes)
                    .ok_or("not even one warp's scratch fits in shared memory")?;
                let bytes = src.shared_bytes(warps);
                dev.allow_shared(&run_fn, bytes)?;
                let threads = 32 * warps as u32;
                let blocks = fill_sms(&run_fn, threads, bytes, sms)?;
                (
                    LaunchConfig {
                        grid_dim: (blocks, 1, 1),
                        block_dim: (threads, 1, 1),
                        shared_mem_bytes: bytes as u32,
                    },
                    blocks as usize * warps,
                    format!("{blocks} blocks of {warps} warps, one stream per warp"),
                )
            }
            Launch::ThreadPerStream => {
                let bytes = src.streams_shared_bytes();
                dev.allow_shared(&run_fn, bytes)?;
                let threads = super::STREAM_THREADS as u32;
                let blocks = fill_sms(&run_fn, threads, bytes, sms)?;
                (
                    LaunchConfig {
                        grid_dim: (blocks, 1, 1),
                        block_dim: (threads, 1, 1),
                        shared_mem_bytes: bytes as u32,
                    },
                    (blocks * threads) as usize,
                    match src.kv_shared_positions {
                        0 => format!(
                            "{blocks} blocks of {threads} threads, one stream per thread, KV caches in global memory"
                        ),
                        p => format!(
                            "{blocks} blocks of {threads} threads, one stream per thread, the first {p} positions of each KV cache in shared memory"
                        ),
                    },
                )
            }
        };
        let stream = &dev.gpu.stream;
        let step_floats = match launch {
            Launch::ThreadPerStream => src.kv_floats,
            Launch::OneWarp | Launch::OneWarpTable => src.lane_scratch_floats,
            Launch::WarpPerStream => src.scratch_floats,
        };
        let info = dev.info(launch.name(), streams, note);
        let mut v = Persistent {
            state: driver("alloc", stream.alloc_zeros::<u32>(3 * streams))?,
            kv: driver("alloc", stream.alloc_zeros::<f32>(streams * src.kv_floats))?,
            checksums: driver("alloc", stream.alloc_zeros::<u64>(streams))?,
            step_scratch: driver("alloc", stream.alloc_zeros::<f32>(step_floats))?,
            step_logits: driver("alloc", stream.alloc_zeros::<f32>(src.shape.vocab))?,
            step_next: driver("alloc", stream.alloc_zeros::<i32>(1))?,
            logits: vec![0.0; src.shape.vocab],
            info,
            launch,
            run_fn,
            step_fn,
            config,
            streams,
            dev,
        };
        v.self_check()?;
        v.reset(microgpt_runtime::sampler::DEFAULT_SEED);
        Ok(v)
    }

    /// The persistent loop must reproduce the step kernel run in the shared generation loop:
    /// stream 0, 2,048 tokens from the default seed, the same checksum.
    fn self_check(&mut self) -> Result<(), String> {
        const TOKENS: u64 = 2048;
        let shape = self.dev.source.shape;
        let mut stream = Stream::new(&shape, stream_seed(microgpt_runtime::sampler::DEFAULT_SEED, 0));
        let mut error = None;
        let want = stream.run(TOKENS, |t, p, r| {
            self.try_step(t, p, r).unwrap_or_else(|e| {
                error.get_or_insert(e);
                0
            })
        });
        if let Some(e) = error {
            return Err(e);
        }
        self.reset(microgpt_runtime::sampler::DEFAULT_SEED);
        let got = self.launch(TOKENS)?;
        if got[0] != want {
            return Err(format!(
                "the persistent loop's stream 0 differs from its own step kernel's over {TOKENS} tokens"
            ));
        }
        Ok(())
    }

    fn try_step(&mut self, tok: usize, pos: usize, r: f32) -> Result<usize, String> {
        let (t, p) = (tok as i32, pos as i32);
        let stream = self.dev.gpu.stream.clone();
        let mut b = stream.launch_builder(&self.step_fn);
        match self.launch {
            Launch::ThreadPerStream => {
                b.arg(&self.dev.weights)
                    .arg(&mut self.step_scratch)
                    .arg(&t)
                    .arg(&p)
                    .arg(&r)
                    .arg(&mut self.step_logits)
                    .arg(&mut self.step_next);
                // SAFETY: mg_thread_step(const float*, float* kv[MG_KV], int, int, float,
                // float* logits[MG_VOCAB], int* next), all sized as allocated above.
                driver("launch", unsafe { b.launch(one_thread()) })?;
                self.logits = driver("copy", stream.clone_dtoh(&self.step_logits))?;
            }
            _ => {
                b.arg(&self.dev.weights)
                    .arg(&mut self.step_scratch)
                    .arg(&t)
                    .arg(&p)
                    .arg(&r)
                    .arg(&mut self.step_next);
                // SAFETY: mg_warp_step(const float*, float* s[MG_SCRATCH], int, int, float,
                // int* next), and mg_lanes_step and mg_lanes_table_step the same with
                // s[MG_LANE_SCRATCH], all sized as allocated above (step_floats); the weights
                // buffer holds the prefix table after the weights (device_floats).
                driver("launch", unsafe { b.launch(one_warp()) })?;
                let at = self.dev.source.logits_offset;
                let view = self.step_scratch.slice(at..at + self.logits.len());
                self.logits = driver("copy", stream.clone_dtoh(&view))?;
            }
        }
        let next = driver("copy", stream.clone_dtoh(&self.step_next))?[0];
        Ok(next as usize)
    }

    /// Runs every stream `steps` steps in one launch; the per-stream checksums.
    fn launch(&mut self, steps: u64) -> Result<Vec<u64>, String> {
        let streams = self.streams as i32;
        let steps = steps as i64;
        let stream = self.dev.gpu.stream.clone();
        let mut b = stream.launch_builder(&self.run_fn);
        b.arg(&self.dev.weights)
            .arg(&mut self.state)
            .arg(&mut self.kv)
            .arg(&streams)
            .arg(&steps)
            .arg(&mut self.checksums);
        // SAFETY: every Launch's kernel (mg_persistent, mg_persistent_table, mg_streams_warp,
        // mg_streams) takes (const float* w[MG_DEVICE_FLOATS], unsigned* state[3 streams], float*
        // kv[MG_KV streams], int streams, long long steps, unsigned long long* checksums[streams]);
        // the grid covers at least `streams` warps or threads and the dynamic shared memory is
        // what the kernel was allowed above.
        driver("launch", unsafe { b.launch(self.config) })?;
        // The copy waits for the kernel: the window ends when the checksums are on the host.
        driver("copy", stream.clone_dtoh(&self.checksums))
    }
}

impl Variant for Persistent {
    fn info(&self) -> &VariantInfo {
        &self.info
    }

    fn shape(&self) -> Shape {
        self.dev.source.shape
    }

    fn step(&mut self, tok: usize, pos: usize, r: f32) -> usize {
        self.try_step(tok, pos, r).unwrap_or_else(|e| fail(e))
    }

    fn logits(&self) -> Vec<f32> {
        self.logits.clone()
    }

    fn device_energy_joules(&self) -> Option<f64> {
        self.dev.joules()
    }

    fn reset(&mut self, seed: u32) {
        let bos = self.dev.source.shape.bos() as u32;
        let state: Vec<u32> = (0..self.streams)
            .flat_map(|s| [bos, 0, stream_seed(seed, s)])
            .collect();
        let stream = self.dev.gpu.stream.clone();
        driver("upload", stream.memcpy_htod(&state, &mut self.state)).unwrap_or_else(|e| fail(e));
    }

    /// `tokens` in all, rounded up to whole steps of every stream.
    fn run(&mut self, tokens: u64) -> u64 {
        let steps = tokens.div_ceil(self.streams as u64);
        let sums = self.launch(steps).unwrap_or_else(|e| fail(e));
        sums.iter().fold(0u64, |a, &s| a.wrapping_mul(31).wrapping_add(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microgpt_weights::default_weights;

    /// Whatever this machine has (no driver, no device, no NVRTC, or a GPU), preparing the CUDA
    /// variants returns a variant or a one-line reason: it never panics.
    #[test]
    fn preparing_never_panics_and_reasons_are_one_line() {
        let weights = default_weights();
        for spec in variants() {
            match spec.prepare(&weights, &Settings::default()) {
                Ok(v) => assert!(v.info().on_gpu, "{}", spec.name),
                Err(why) => {
                    let why = why.to_string();
                    assert!(!why.is_empty() && !why.contains('\n'), "{}: {why:?}", spec.name);
                    eprintln!("{}: skipped: {why}", spec.name);
                }
            }
        }
    }

    #[test]
    fn nvrtc_hints_name_the_library_and_what_to_do() {
        let root = std::env::temp_dir().join(format!("microgpt-nvrtc-hint-{}", std::process::id()));
        let (cuda13, cuda12, empty) = (root.join("cuda13"), root.join("cuda12"), root.join("empty"));
        for d in [&cuda13, &cuda12, &empty] {
            std::fs::create_dir_all(d).unwrap();
        }
        for name in ["libnvrtc.so.13.0.88", "libnvrtc.so.13", "libnvrtc-builtins.so.13"] {
            std::fs::write(cuda13.join(name), b"").unwrap();
        }
        std::fs::write(cuda12.join("libnvrtc.so.12"), b"").unwrap();
        assert_eq!(nvrtc_hint(&[empty], &[root.join("missing")]), None);
        let hint = nvrtc_hint(&[], std::slice::from_ref(&cuda13)).unwrap();
        let lib13 = cuda13.join("libnvrtc.so.13");
        assert!(
            hint.starts_with(&format!("found {}, a name", lib13.display())),
            "{hint}"
        );
        assert!(hint.contains(&format!(":{}:", cuda13.display())), "{hint}");
        assert!(hint.contains("ln -sf") && !hint.contains('\n'), "{hint}");
        let hint = nvrtc_hint(&[], &[cuda13.clone(), cuda12.clone()]).unwrap();
        assert!(
            hint.contains(&format!("put {} on LD_LIBRARY_PATH", cuda12.display())),
            "{hint}"
        );
        let hint = nvrtc_hint(std::slice::from_ref(&cuda12), &[cuda13]).unwrap();
        assert!(
            hint.contains("on LD_LIBRARY_PATH, but it does not load"),
            "{hint}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn uuid_formatting() {
        assert_eq!(hex(&[0x0a, 0xff, 0x00]), "0aff00");
    }
}
