package selector

import "math"

// The thresholds of the rule heuristic (DESIGN section 6; the same values as
// dwcp_selector.modeling.baselines in the Python package).
const (
	HeuristicMinBytes         = 1024  // payloads smaller than this are sent raw
	HeuristicHighEntropy      = 7.5   // bits per byte above which a sample is incompressible
	HeuristicLowRTTS          = 1e-3  // seconds: below this (with a fast link) the light codec wins
	HeuristicFastBandwidthBps = 500e6 // bit/s available above which (with a low RTT) lz4 wins
	HeuristicSimilar          = 0.8   // baseline similarity above which delta encoding wins
	HeuristicLowBandwidthBps  = 100e6 // bit/s available below which full compression (or delta) wins
)

// The four strategies, in the oracle's order.
const (
	None = "none"
	LZ4  = "lz4"
	Zstd = "zstd"
	HDE  = "hde"
)

// Strategies lists the strategies the service may answer.
var Strategies = []string{None, LZ4, Zstd, HDE}

// AvailableBps is the bandwidth left for a transfer: capacity × (1 − utilization).
func (l Link) AvailableBps() float64 {
	return l.CapacityBps * (1.0 - l.Utilization)
}

// HeuristicRule is the rule heuristic on decision-time features; the first match wins:
//
//  1. payload < 1 KiB or sample entropy > 7.5 bit/byte → none
//  2. RTT < 1 ms and available bandwidth > 500 Mbit/s → lz4
//  3. baseline present and similarity > 0.8 → hde
//  4. available bandwidth < 100 Mbit/s → hde with a baseline, else zstd
//  5. otherwise → lz4
//
// similarity is ignored without a baseline; pass 0 when it is not known.
func HeuristicRule(size int64, entropy float64, hasBaseline bool, similarity float64, link Link) string {
	if size < HeuristicMinBytes || entropy > HeuristicHighEntropy {
		return None
	}
	available := link.AvailableBps()
	if link.RTTS < HeuristicLowRTTS && available > HeuristicFastBandwidthBps {
		return LZ4
	}
	if hasBaseline && similarity > HeuristicSimilar {
		return HDE
	}
	if available < HeuristicLowBandwidthBps {
		if hasBaseline {
			return HDE
		}
		return Zstd
	}
	return LZ4
}

// Heuristic is the rule heuristic on a request, read as the service reads it: the entropy of the
// statistics (or, for a request that carries a sample instead, the byte entropy of the whole sample;
// 0 with neither), the similarity only with a baseline.
func Heuristic(req Request) string {
	entropy := 0.0
	if req.Stats != nil {
		entropy = req.Stats.Entropy
	} else if len(req.Sample) > 0 {
		entropy = ByteEntropy(req.Sample)
	}
	similarity := 0.0
	if req.HasBaseline && req.Similarity != nil {
		similarity = *req.Similarity
	}
	return HeuristicRule(req.PayloadBytes, entropy, req.HasBaseline, similarity, req.Link)
}

// ByteEntropy is the Shannon entropy of b in bits per byte (0 for an empty slice).
func ByteEntropy(b []byte) float64 {
	if len(b) == 0 {
		return 0
	}
	var counts [256]int
	for _, c := range b {
		counts[c]++
	}
	n := float64(len(b))
	h := 0.0
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}
