// Command example_trainer is the active-learning round loop of a Go trainer against
// Assay: the code to copy.
//
// One pool lives through every round. Its arrays go up once: the features, which
// never change ("embeddings"), and the first model's class probabilities ("probs").
// The seed labels go up once too. Then each round:
//  1. Select: Assay picks the next batch from the pool's current version; labeled
//     items are never picked again, so nothing is excluded by hand;
//  2. Label: only the new batch's labels are sent, the earlier ones stay in the pool;
//  3. retrain on every label so far and predict the whole pool again;
//  4. Replace: the new probs take the place of the old ones for all N items in one
//     streamed call; the pool gets a new version, which the next Select reports.
//
// The pool is deleted at the end.
//
// The model stands in for yours: a nearest-centroid classifier over synthetic
// embeddings, where "retraining" is taking the class means of the labeled items.
// The run checks what the loop promises and exits 1 otherwise: each Select answers
// from the version the last call left (so versions increase round by round), never
// picks an item labeled before, and the pool keeps every label sent.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand"
	"os"

	assay "github.com/assay-dev/assay/clients/go"
)

const d, classes = 16, 4 // feature width, classes

func main() {
	target := flag.String("target", os.Getenv("ASSAY_TARGET"), "server host:port (default 127.0.0.1:50051)")
	rounds := flag.Int("rounds", 5, "active-learning rounds")
	n := flag.Int("pool-size", 4000, "pool items")
	budget := flag.Int64("budget", 20, "items labeled per round")
	strategy := flag.String("strategy", "entropy", "acquisition strategy")
	token := flag.String("token", os.Getenv("ASSAY_TOKEN"), "bearer token")
	ca := flag.String("tls-ca", os.Getenv("ASSAY_TLS_CA"), "CA certificate (PEM): enables TLS")
	cert := flag.String("tls-cert", os.Getenv("ASSAY_TLS_CERT"), "client certificate (PEM) for mTLS")
	key := flag.String("tls-key", os.Getenv("ASSAY_TLS_KEY"), "client key (PEM) for mTLS")
	skip := flag.Bool("skip-without-target", false, "exit 77 when no target is given")
	flag.Parse()
	if *target == "" {
		if *skip {
			fmt.Println("ASSAY_TARGET is not set: skipped")
			os.Exit(77)
		}
		*target = "127.0.0.1:50051"
	}

	ctx := context.Background()
	c, err := assay.Dial(ctx, *target, assay.Options{Token: *token, TLS: *ca != "",
		CAFile: *ca, CertFile: *cert, KeyFile: *key})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Synthetic data: N items around the class centers; truth[i] is what a labeler says.
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
	labelsOf := func(items []int64) []int64 {
		out := make([]int64, len(items))
		for i, idx := range items {
			out[i] = truth[idx]
		}
		return out
	}
	labeled := []int64{0, 1, 2, 3} // seed set: one item per class
	isLabeled := make([]bool, *n)
	for _, i := range labeled {
		isLabeled[i] = true
	}

	const pool = "example-trainer-go"
	_ = c.DeletePool(ctx, pool) // a leftover of an interrupted run

	// Once: the pool, its features and the first model's outputs, the seed labels.
	probs := make([]float32, *n*classes)
	acc := retrainAndPredict(emb, truth, labeled, probs)
	et, _ := assay.F32(emb, int64(*n), d)
	pt, _ := assay.F32(probs, int64(*n), classes)
	if _, err := c.CreatePool(ctx, pool); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Append(ctx, pool, []assay.NamedTensor{{Name: "embeddings", Tensor: et},
		{Name: "probs", Tensor: pt}}, 64<<10, ""); err != nil {
		log.Fatal(err)
	}
	p, err := c.Label(ctx, pool, labeled, labelsOf(labeled), "")
	if err != nil {
		log.Fatal(err)
	}
	version, lastVersion := p.Version, int64(-1)

	for round := 0; round < *rounds; round++ {
		// 1. Select from the pool: no arrays travel, the server uses what it holds.
		seed := uint64(1234)
		sel, err := c.Select(ctx, assay.SelectRequest{Strategy: *strategy, Budget: *budget,
			PoolID: pool, Seed: &seed})
		if err != nil {
			log.Fatal(err)
		}
		if sel.PoolVersion != version || sel.PoolVersion <= lastVersion {
			log.Fatalf("round %d: the select used pool version %d, not %d", round, sel.PoolVersion, version)
		}
		lastVersion = sel.PoolVersion
		for _, i := range sel.Indices {
			if i < 0 || i >= int64(*n) || isLabeled[i] {
				log.Fatalf("round %d: item %d was selected although labeled", round, i)
			}
			isLabeled[i] = true
		}
		fmt.Printf("round %d: pool version %d, accuracy %.3f with %d labels; selected %d (best %d)\n",
			round, sel.PoolVersion, acc, len(labeled), len(sel.Indices), sel.Indices[0])

		// 2. Label the new batch only; the pool keeps the earlier labels.
		p, err := c.Label(ctx, pool, sel.Indices, labelsOf(sel.Indices), "")
		if err != nil {
			log.Fatal(err)
		}
		labeled = append(labeled, sel.Indices...)
		if p.LabeledCount != int64(len(labeled)) {
			log.Fatalf("the pool holds %d labels, not %d", p.LabeledCount, len(labeled))
		}

		// 3. Retrain on every label so far; predict the whole pool.
		acc = retrainAndPredict(emb, truth, labeled, probs)

		// 4. Replace the model's outputs for all N items (streamed in chunks); the
		//    embeddings and the labels stay as they are.
		pt, _ := assay.F32(probs, int64(*n), classes)
		p, err = c.Replace(ctx, pool, []assay.NamedTensor{{Name: "probs", Tensor: pt}}, 64<<10, "")
		if err != nil {
			log.Fatal(err)
		}
		version = p.Version
	}
	fmt.Printf("final: accuracy %.3f with %d labels\n", acc, len(labeled))
	if err := c.DeletePool(ctx, pool); err != nil {
		log.Fatal(err)
	}
}

// retrainAndPredict is the stand-in model: it fits class means on the labeled items,
// then writes softmax probabilities of negative squared distances for every item.
// It returns the accuracy.
func retrainAndPredict(emb []float32, truth, labeled []int64, probs []float32) float64 {
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
