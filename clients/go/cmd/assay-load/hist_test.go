package main

import (
	"math"
	"testing"
	"time"
)

func TestHistogramQuantilesWithinOnePercent(t *testing.T) {
	h := newHist()
	for v := 1; v <= 100000; v++ { // 1 µs .. 100 ms, uniform
		h.record(time.Duration(v) * time.Microsecond)
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := q * 100000 / 1000
		if got := h.quantile(q); math.Abs(got-want)/want > 0.01 {
			t.Errorf("q%v = %v ms, want %v ms", q, got, want)
		}
	}
	if h.summary()["max"] != 100 {
		t.Errorf("max %v", h.summary()["max"])
	}
}

func TestBucketsAreMonotonic(t *testing.T) {
	last := -1
	for v := int64(0); v < 1<<22; v += 37 {
		b := bucket(v)
		if b < last || upper(b) < v {
			t.Fatalf("v=%d bucket %d upper %d", v, b, upper(b))
		}
		last = b
	}
}
