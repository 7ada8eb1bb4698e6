"""What every job shares: plan, launch, batch, the region and weights stages, the base
graph."""
