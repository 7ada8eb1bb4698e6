"""What every job shares: plan, launch, batch, the region stages and the base graph."""
