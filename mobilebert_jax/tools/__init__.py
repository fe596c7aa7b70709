"""Operations tools: ahead-of-time compiles for TPU topologies (`aot_compile`) and sweeps over configs (`sweep`)."""
