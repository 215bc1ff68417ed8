package dev.assay.client;

/**
 * The dtype and full shape of one stored pool array.
 *
 * @param name role name ("probs", "embeddings", ...)
 * @param dtype element type as stored
 * @param shape full shape across all items of the pool
 */
public record ArrayInfo(String name, DType dtype, long[] shape) {}
