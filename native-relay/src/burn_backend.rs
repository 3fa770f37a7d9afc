//! Generation on burn's backends: wgpu (Vulkan, Metal, DX12) or its CPU backend.

use burn::tensor::Device;
use kwaainet_core::Result;
use kwaainet_core::generate::Session;
use kwaainet_core::models::llama::burn::BurnLlama;

/// Opens burn's wgpu device (the first adapter wgpu finds).
pub fn wgpu_device() -> anyhow::Result<Device> {
    pollster::block_on(Device::wgpu_options().init_async())
        .map_err(|e| anyhow::anyhow!("no wgpu adapter available ({e:?}); try --backend cpu"))
}

/// The engine's async burn session, driven to completion on this thread (a native binary
/// may block on readback).
#[derive(Debug)]
pub struct BurnSession<'a>(kwaainet_core::models::llama::burn::BurnSession<&'a BurnLlama>);

impl<'a> BurnSession<'a> {
    pub fn new(model: &'a BurnLlama, max_ctx: usize) -> Result<Self> {
        Ok(Self(kwaainet_core::models::llama::burn::BurnSession::new(
            model, max_ctx,
        )?))
    }
}

impl Session for BurnSession<'_> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        pollster::block_on(self.0.forward_async(tokens))
    }
    fn len(&self) -> usize {
        kwaainet_core::generate::AsyncSession::len(&self.0)
    }
    fn max_ctx(&self) -> usize {
        kwaainet_core::generate::AsyncSession::max_ctx(&self.0)
    }
}
