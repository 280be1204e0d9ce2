"""Codec implementations, each an Encoder + Decoder pair registered in ``talkcodec.registry``."""
