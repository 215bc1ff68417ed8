// Command example_trainer runs an active-learning loop against Assay: a
// nearest-centroid classifier over synthetic embeddings predicts class
// probabilities, the pool (embeddings + probabilities) is streamed up, the
// labeled items are marked, Assay picks the next batch, and the loop repeats.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand"
	"os"

	"assay"
)

func main() {
	target := flag.String("target", envOr("ASSAY_TARGET", "127.0.0.1:50051"), "server host:port")
	rounds := flag.Int("rounds", 5, "active-learning rounds")
	n := flag.Int("pool-size", 4000, "pool items")
	budget := flag.Int64("budget", 20, "items labeled per round")
	strategy := flag.String("strategy", "entropy", "acquisition strategy")
	token := flag.String("token", os.Getenv("ASSAY_TOKEN"), "bearer token")
	ca := flag.String("tls-ca", "", "CA certificate (PEM): enables TLS")
	cert := flag.String("tls-cert", "", "client certificate (PEM) for mTLS")
	key := flag.String("tls-key", "", "client key (PEM) for mTLS")
	flag.Parse()

	ctx := context.Background()
	c, err := assay.Dial(ctx, *target, assay.Options{Token: *token, TLS: *ca != "",
		CAFile: *ca, CertFile: *cert, KeyFile: *key})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	const d, classes = 16, 4
	rng := rand.New(rand.NewSource(7))
	centers := make([][]float32, classes)
	for k := range centers {
		centers[k] = make([]float32, d)
		for j := range centers[k] {
			centers[k][j] = float32(rng.NormFloat64() * 0.6)
		}
	}
	emb := make([]float32, *n*d)
	truth := make([]int64, *n)
	for i := 0; i < *n; i++ {
		truth[i] = int64(i % classes)
		for j := 0; j < d; j++ {
			emb[i*d+j] = centers[truth[i]][j] + float32(rng.NormFloat64())
		}
	}
	labeled := []int64{0, 1, 2, 3}
	probs := make([]float32, *n*classes)
	for round := 0; round < *rounds; round++ {
		acc := predict(emb, truth, labeled, probs, d, classes)
		pool := fmt.Sprintf("example-trainer-go-%d", round)
		_ = c.DeletePool(ctx, pool) // a leftover from an interrupted run
		if _, err := c.CreatePool(ctx, pool); err != nil {
			log.Fatal(err)
		}
		et, _ := assay.F32(emb, int64(*n), d)
		pt, _ := assay.F32(probs, int64(*n), classes)
		if _, err := c.Append(ctx, pool, []assay.NamedTensor{{Name: "embeddings", Tensor: et},
			{Name: "probs", Tensor: pt}}, 64<<10, ""); err != nil {
			log.Fatal(err)
		}
		labels := make([]int64, len(labeled))
		for i, idx := range labeled {
			labels[i] = truth[idx]
		}
		if _, err := c.Label(ctx, pool, labeled, labels, ""); err != nil {
			log.Fatal(err)
		}
		seed := uint64(1234)
		sel, err := c.Select(ctx, assay.SelectRequest{Strategy: *strategy, Budget: *budget,
			PoolID: pool, Seed: &seed})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("round %d: accuracy %.3f with %d labels; selected %d (best %d)\n",
			round, acc, len(labeled), len(sel.Indices), sel.Indices[0])
		labeled = append(labeled, sel.Indices...)
		if err := c.DeletePool(ctx, pool); err != nil {
			log.Fatal(err)
		}
	}
}

// predict fits class centroids on the labeled items and writes softmax probabilities.
func predict(emb []float32, truth, labeled []int64, probs []float32, d, classes int) float64 {
	mean := make([][]float64, classes)
	count := make([]int, classes)
	for k := range mean {
		mean[k] = make([]float64, d)
	}
	for _, i := range labeled {
		count[truth[i]]++
		for j := 0; j < d; j++ {
			mean[truth[i]][j] += float64(emb[int(i)*d+j])
		}
	}
	n, correct := len(truth), 0
	logits := make([]float64, classes)
	for i := 0; i < n; i++ {
		top := math.Inf(-1)
		for k := 0; k < classes; k++ {
			logits[k] = math.Inf(-1)
			if count[k] > 0 {
				dist := 0.0
				for j := 0; j < d; j++ {
					diff := float64(emb[i*d+j]) - mean[k][j]/float64(count[k])
					dist += diff * diff
				}
				logits[k] = -2 * dist / float64(d)
			}
			top = math.Max(top, logits[k])
		}
		z, best := 0.0, 0
		for k := 0; k < classes; k++ {
			z += math.Exp(logits[k] - top)
		}
		for k := 0; k < classes; k++ {
			probs[i*classes+k] = float32(math.Exp(logits[k]-top) / z)
			if probs[i*classes+k] > probs[i*classes+best] {
				best = k
			}
		}
		if int64(best) == truth[i] {
			correct++
		}
	}
	return float64(correct) / float64(n)
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
