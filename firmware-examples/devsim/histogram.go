package devsim

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram counts durations in microseconds in log-linear buckets (8 per
// power of two, so a quantile is within 12.5% of the true value). Safe for
// concurrent use; the zero value is empty and ready.
type histogram struct {
	counts [8 + 61*8]atomic.Uint64
	n      atomic.Uint64
	max    atomic.Int64 // microseconds
}

func bucketOf(us uint64) int {
	if us < 8 {
		return int(us)
	}
	e := bits.Len64(us) - 1 // >= 3
	return (e-2)*8 + int((us>>(e-3))&7)
}

// bucketUpper is the largest value in bucket i.
func bucketUpper(i int) uint64 {
	if i < 8 {
		return uint64(i)
	}
	e := i/8 + 2
	lower := uint64(8+i%8) << (e - 3)
	return lower + (uint64(1) << (e - 3)) - 1
}

func (h *histogram) add(d time.Duration) {
	us := d.Microseconds()
	if us < 0 {
		us = 0
	}
	h.counts[bucketOf(uint64(us))].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			break
		}
	}
}

// quantile returns the upper bound of the bucket holding the q-quantile.
func (h *histogram) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n-1)) + 1
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return min(time.Duration(bucketUpper(i))*time.Microsecond, time.Duration(h.max.Load())*time.Microsecond)
		}
	}
	return time.Duration(h.max.Load()) * time.Microsecond
}

// Latency summarises the time from a QoS 1 message's first send to its
// PUBACK, in milliseconds. Quantiles are bucketed (within 12.5%).
type Latency struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

func (h *histogram) summary() Latency {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return Latency{Count: h.n.Load(), P50: ms(h.quantile(0.50)), P90: ms(h.quantile(0.90)),
		P99: ms(h.quantile(0.99)), Max: float64(h.max.Load()) / 1000}
}
