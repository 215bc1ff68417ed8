package dev.assay.client;

/**
 * What an append answers.
 *
 * @param pool the pool after the append
 * @param firstIndex index of the first appended item
 * @param appendedCount number of appended items
 */
public record AppendResult(Pool pool, long firstIndex, long appendedCount) {}
