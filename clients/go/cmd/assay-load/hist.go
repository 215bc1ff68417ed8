package main

import (
	"math/bits"
	"time"
)

// hist is an HDR-style log-linear latency histogram in microseconds: 128 linear
// sub-buckets per power of two, so any reported percentile is within 1% of the
// true value (reported at its bucket's upper edge), from 1 µs to hours.
type hist struct {
	counts []uint64
	total  uint64
	sum    float64
	max    int64
}

const subBuckets = 128

func newHist() *hist { return &hist{counts: make([]uint64, 64*subBuckets)} }

func bucket(v int64) int {
	if v < subBuckets {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 8 // v >> e is in [128, 255]
	return (e+1)*subBuckets + int(v>>uint(e)) - subBuckets
}

func upper(i int) int64 {
	if i < subBuckets {
		return int64(i)
	}
	e := i/subBuckets - 1
	m := int64(i%subBuckets + subBuckets)
	return (m+1)<<uint(e) - 1
}

func (h *hist) record(d time.Duration) {
	us := d.Microseconds()
	if us < 0 {
		us = 0
	}
	h.counts[bucket(us)]++
	h.total++
	h.sum += float64(us)
	if us > h.max {
		h.max = us
	}
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.sum += o.sum
	if o.max > h.max {
		h.max = o.max
	}
}

// quantile returns the latency in milliseconds at quantile q (0..1).
func (h *hist) quantile(q float64) float64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(q*float64(h.total) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := upper(i)
			if v > h.max {
				v = h.max
			}
			return float64(v) / 1000
		}
	}
	return float64(h.max) / 1000
}

func (h *hist) summary() map[string]float64 {
	mean := 0.0
	if h.total > 0 {
		mean = h.sum / float64(h.total) / 1000
	}
	return map[string]float64{"p50": h.quantile(0.5), "p90": h.quantile(0.9),
		"p99": h.quantile(0.99), "p99.9": h.quantile(0.999), "max": float64(h.max) / 1000,
		"mean": mean}
}
