//! Generation on burn's backends: wgpu (Vulkan, Metal, DX12) or its CPU backend.

use burn::tensor::Device;
use kwaainet_core::burn_model::{BurnKvCache, BurnLlama};
use kwaainet_core::generate::Session;
use kwaainet_core::{Error, Result};

/// Opens burn's wgpu device (the first adapter wgpu finds).
pub fn wgpu_device() -> anyhow::Result<Device> {
    pollster::block_on(Device::wgpu_options().init_async())
        .map_err(|e| anyhow::anyhow!("no wgpu adapter available ({e:?}); try --backend cpu"))
}

/// A [`Session`] over a [`BurnLlama`] holding every block.
#[derive(Debug)]
pub struct BurnSession<'a> {
    model: &'a BurnLlama,
    cache: BurnKvCache,
}

impl<'a> BurnSession<'a> {
    pub fn new(model: &'a BurnLlama, max_ctx: usize) -> Result<Self> {
        let c = model.config();
        let cache = BurnKvCache::new(
            c,
            0..c.n_layers,
            max_ctx.min(c.context_length),
            model.device(),
        )?;
        Ok(Self { model, cache })
    }
}

impl Session for BurnSession<'_> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to run".into()));
        }
        let start = self.cache.len();
        let h = self.model.embed(tokens)?;
        let h =
            self.model
                .forward_span(0..self.model.config().n_layers, h, &mut self.cache, start)?;
        pollster::block_on(self.model.last_logits(h))
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn max_ctx(&self) -> usize {
        self.cache.capacity()
    }
}
