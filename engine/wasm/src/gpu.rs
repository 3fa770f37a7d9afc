//! The WebGPU device of the `webgpu` module: opening it through burn's wgpu runtime while
//! keeping wgpu's own handles, so that the engine can report the adapter and the limits it
//! actually got, notice when the device is lost, and (test support) lose it on purpose.

use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use burn::tensor::wgpu::wgpu;

use crate::engine::{EngineError, ErrorCode, GpuInfo, GpuLimits};

/// The device burn's runtime runs on, and whether it is still there.
#[derive(Clone)]
pub(crate) struct Gpu {
    device: wgpu::Device,
    info: GpuInfo,
    /// Why the device was lost, once it was (set by wgpu's device-lost callback, which must
    /// be `Send`: hence not an `Rc`).
    lost: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens the adapter and device (burn's default selection: a high-performance adapter)
    /// and registers the runtime; fails with `webgpu:` when there is none.
    pub(crate) async fn open() -> Result<(Device, Self), EngineError> {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map_err(|e| EngineError::new(ErrorCode::Webgpu, format!("no WebGPU device: {e:?}")))?;
        let adapter = setup.adapter.get_info();
        let l = setup.device.limits();
        let info = GpuInfo {
            adapter: adapter.name.clone(),
            fallback_adapter: adapter.device_type == wgpu::DeviceType::Cpu,
            backend: format!("{:?}", adapter.backend),
            limits: GpuLimits {
                max_buffer_size: l.max_buffer_size as f64,
                max_storage_buffer_binding_size: l.max_storage_buffer_binding_size as f64,
                max_uniform_buffer_binding_size: l.max_uniform_buffer_binding_size as f64,
                max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
                max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
                max_compute_workgroup_size_x: l.max_compute_workgroup_size_x,
                max_compute_workgroup_size_y: l.max_compute_workgroup_size_y,
                max_compute_workgroup_size_z: l.max_compute_workgroup_size_z,
                max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            },
        };
        let lost = Arc::new(Mutex::new(None));
        let flag = Arc::clone(&lost);
        setup
            .device
            .set_device_lost_callback(move |reason, message| {
                if let Ok(mut l) = flag.lock() {
                    *l = Some(format!("{reason:?}: {message}"));
                }
            });
        Ok((
            device,
            Self {
                device: setup.device,
                info,
                lost,
            },
        ))
    }

    pub(crate) fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Why the device was lost, or `None` while it is there.
    pub(crate) fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// Test support: destroys the device, as a driver reset or the browser would. The
    /// device-lost callback then runs (asynchronously, from the browser's `lost` promise).
    pub(crate) fn destroy(&self) {
        self.device.destroy();
    }
}
