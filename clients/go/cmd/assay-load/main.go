// Command assay-load is a load generator for Assay: open-loop at a target rate or
// closed-loop at a concurrency, with warm-up, an HDR-style latency histogram,
// throughput, and errors counted by status code. It only targets the address it is
// given, and every run is bounded in time and in requests.
//
//	assay-load -target 127.0.0.1:50051 -mode closed -concurrency 8 -duration 10s
//	assay-load -target 127.0.0.1:50051 -mode open -rate 200 -duration 10s -json out.json
//	assay-load -target 127.0.0.1:50052 -method echo ...   (raw echo of the same payload)
//
// Each request is a Select of an inline [N, C] float32 probs array (entropy, budget b);
// it is encoded once, and only a fresh request id is appended per call (so the server's
// idempotency cache never answers in its place). -upload-mb streams pool uploads of that
// size in the background during the measurement (the mixed scenario).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/rand"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	assay "github.com/assay-dev/assay/clients/go"
	assayv1 "github.com/assay-dev/assay/clients/go/gen/assayv1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// rawCodec sends and receives pre-encoded bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error)      { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                               { return "proto" }

type result struct {
	Method         string             `json:"method"`
	Mode           string             `json:"mode"`
	Rate           float64            `json:"offered_rate"`
	Concurrency    int                `json:"concurrency"`
	DurationS      float64            `json:"duration_s"`
	OK             uint64             `json:"ok"`
	Errors         map[string]uint64  `json:"errors"`
	NotSent        uint64             `json:"not_sent"`
	ThroughputRPS  float64            `json:"throughput_rps"`
	AttemptedRPS   float64            `json:"attempted_rps"`
	Latency        map[string]float64 `json:"latency_ms"`
	ErrorLatency   map[string]float64 `json:"error_latency_ms"`
	RequestBytes   int                `json:"request_bytes"`
	MBPerS         float64            `json:"request_mb_per_s"`
	Uploads        int64              `json:"uploads_completed"`
	UploadMBPerS   float64            `json:"upload_mb_per_s"`
	UploadErrors   map[string]uint64  `json:"upload_errors,omitempty"`
	Checked        uint64             `json:"responses_checked"`
	GOMAXPROCS     int                `json:"client_gomaxprocs"`
	CompletedAfter float64            `json:"completed_after_s"`
}

type recorder struct {
	mu      sync.Mutex
	ok, err *hist
	codes   map[string]uint64
	checked uint64
}

func (r *recorder) add(lat time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.ok.record(lat)
		return
	}
	r.err.record(lat)
	r.codes[status.Code(err).String()]++
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "server host:port (loopback)")
	method := flag.String("method", "select", "select | echo")
	echoMethod := flag.String("echo-method", "/assay.bench.Echo/Echo", "full method of the echo server")
	mode := flag.String("mode", "closed", "closed (fixed concurrency) | open (fixed arrival rate)")
	rate := flag.Float64("rate", 100, "open loop: requests per second")
	concurrency := flag.Int("concurrency", 8, "closed loop: workers; open loop: max in flight")
	duration := flag.Duration("duration", 10*time.Second, "measured time")
	warmup := flag.Duration("warmup", 2*time.Second, "unrecorded time before measuring")
	maxRequests := flag.Int64("max-requests", 1_000_000, "hard bound on requests sent")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each request")
	n := flag.Int("n", 10000, "items per Select")
	c := flag.Int("c", 10, "classes per item")
	b := flag.Int64("b", 100, "budget")
	strategy := flag.String("strategy", "entropy", "strategy")
	conns := flag.Int("conns", 4, "connections (round robin)")
	uploadMB := flag.Int("upload-mb", 0, "background pool uploads of this many MB, repeated")
	token := flag.String("token", os.Getenv("ASSAY_TOKEN"), "bearer token")
	ca := flag.String("tls-ca", "", "CA (PEM): enables TLS")
	cert := flag.String("tls-cert", "", "client certificate (PEM)")
	key := flag.String("tls-key", "", "client key (PEM)")
	jsonOut := flag.String("json", "", "write the result as JSON here")
	flag.Parse()

	opts := assay.Options{Timeout: *timeout, Token: *token, TLS: *ca != "", CAFile: *ca,
		CertFile: *cert, KeyFile: *key, Retries: -1}
	clients := make([]*assay.Client, *conns)
	for i := range clients {
		cl, err := assay.Dial(context.Background(), *target, opts)
		if err != nil {
			log.Fatal(err)
		}
		defer cl.Close()
		clients[i] = cl
	}

	// The Select payload: softmax rows of random logits, encoded once.
	rng := rand.New(rand.NewSource(1))
	probs := make([]float32, *n**c)
	for i := 0; i < *n; i++ {
		sum := float32(0)
		for j := 0; j < *c; j++ {
			probs[i**c+j] = float32(rng.ExpFloat64())
			sum += probs[i**c+j]
		}
		for j := 0; j < *c; j++ {
			probs[i**c+j] /= sum
		}
	}
	pt, _ := assay.F32(probs, int64(*n), int64(*c))
	seed := uint64(7)
	req, err := assay.BuildSelect(assay.SelectRequest{Strategy: *strategy, Budget: *b,
		Inputs: map[string]assay.Tensor{"probs": pt}, Seed: &seed, RequestID: "-"})
	if err != nil {
		log.Fatal(err)
	}
	req.RequestId = ""
	base, err := proto.Marshal(req)
	if err != nil {
		log.Fatal(err)
	}
	fullMethod := "/assay.v1.AssayService/Select"
	if *method == "echo" {
		fullMethod = *echoMethod
	}

	rec := &recorder{ok: newHist(), err: newHist(), codes: map[string]uint64{}}
	var sent int64
	var seq uint64
	var recording atomic.Bool
	call := func(ctx context.Context, scheduled time.Time) {
		id := atomic.AddUint64(&seq, 1)
		cl := clients[id%uint64(len(clients))]
		msg := protowire.AppendString(protowire.AppendTag(append([]byte(nil), base...), 7,
			protowire.BytesType), fmt.Sprintf("load-%d-%d", time.Now().UnixNano(), id))
		var resp []byte
		cctx, cancel := cl.CallContext(ctx, *timeout)
		err := cl.Conn().Invoke(cctx, fullMethod, &msg, &resp, grpc.ForceCodec(rawCodec{}))
		cancel()
		lat := time.Since(scheduled)
		if err == nil && *method == "select" && id%50 == 0 {
			var r assayv1.SelectResponse
			if e := proto.Unmarshal(resp, &r); e != nil || int64(len(r.Indices)) != *b {
				err = fmt.Errorf("bad select response: %v (%d indices)", e, len(r.Indices))
				log.Print(err)
			} else {
				atomic.AddUint64(&rec.checked, 1)
			}
		}
		if recording.Load() {
			rec.add(lat, err)
		}
	}

	ctx := context.Background() // requests end by their own deadline, never by cancellation
	upCtx, stopUploads := context.WithCancel(ctx)
	defer stopUploads()
	var wg, upWG sync.WaitGroup // requests; background uploads
	var notSent uint64

	// Background uploads (mixed scenario): create, append uploadMB in 4 MiB chunks, delete.
	var uploads int64
	var uploadBytes int64
	uploadErrs := map[string]uint64{}
	var uploadMu sync.Mutex
	if *uploadMB > 0 {
		rows := *uploadMB << 20 / (4 * 64)
		emb := make([]float32, rows*64)
		for i := range emb {
			emb[i] = float32(i%1000) / 1000
		}
		et, _ := assay.F32(emb, int64(rows), 64)
		upWG.Add(1)
		go func() {
			defer upWG.Done()
			up, err := assay.Dial(upCtx, *target, assay.Options{Timeout: 120 * time.Second,
				Token: *token, TLS: *ca != "", CAFile: *ca, CertFile: *cert, KeyFile: *key})
			if err != nil {
				log.Fatal(err)
			}
			defer up.Close()
			for k := 0; upCtx.Err() == nil; k++ {
				id := fmt.Sprintf("load-upload-%d-%d", os.Getpid(), k)
				_, err := up.CreatePool(upCtx, id)
				if err == nil {
					_, err = up.Append(upCtx, id, []assay.NamedTensor{{Name: "embeddings", Tensor: et}}, 4<<20, "")
					_ = up.DeletePool(context.Background(), id)
				}
				uploadMu.Lock()
				if err != nil {
					if upCtx.Err() == nil {
						uploadErrs[status.Code(err).String()]++
					}
				} else if recording.Load() {
					uploads++
					uploadBytes += int64(len(et.Data))
				}
				uploadMu.Unlock()
			}
		}()
	}

	start := time.Now()
	measureStart := start.Add(*warmup)
	end := measureStart.Add(*duration)
	go func() {
		time.Sleep(time.Until(measureStart))
		recording.Store(true)
	}()
	sem := make(chan struct{}, *concurrency)
	if *mode == "closed" {
		for w := 0; w < *concurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) && atomic.AddInt64(&sent, 1) <= *maxRequests {
					call(ctx, time.Now())
				}
			}()
		}
	} else {
		// Open loop: arrivals on a fixed schedule; latency counts from the scheduled
		// time, so a slow server cannot hide queueing (no coordinated omission).
		interval := time.Duration(float64(time.Second) / *rate)
		next := start
		for next.Before(end) && atomic.AddInt64(&sent, 1) <= *maxRequests {
			time.Sleep(time.Until(next))
			scheduled := next
			next = next.Add(interval)
			select {
			case sem <- struct{}{}:
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					call(ctx, scheduled)
				}()
			default: // more than -concurrency in flight: the client itself is saturated
				if recording.Load() {
					notSent++
				}
			}
		}
	}
	waitStart := time.Now()
	wg.Wait() // in-flight requests finish (each has its own deadline)
	recording.Store(false)
	stopUploads()
	upWG.Wait()
	measured := time.Now()
	if measured.After(end) {
		measured = end
	}
	elapsed := measured.Sub(measureStart).Seconds()

	rec.mu.Lock()
	defer rec.mu.Unlock()
	errCount := uint64(0)
	for _, v := range rec.codes {
		errCount += v
	}
	res := result{Method: *method, Mode: *mode, Concurrency: *concurrency, DurationS: elapsed,
		OK: rec.ok.total, Errors: rec.codes, NotSent: notSent,
		ThroughputRPS: float64(rec.ok.total) / elapsed,
		AttemptedRPS:  float64(rec.ok.total+errCount+notSent) / elapsed,
		Latency:       rec.ok.summary(), ErrorLatency: rec.err.summary(),
		RequestBytes: len(base) + 40, Uploads: uploads, UploadErrors: uploadErrs,
		UploadMBPerS: float64(uploadBytes) / (1 << 20) / elapsed,
		Checked:      rec.checked, GOMAXPROCS: runtime.GOMAXPROCS(0),
		CompletedAfter: time.Since(waitStart).Seconds()}
	res.MBPerS = res.ThroughputRPS * float64(res.RequestBytes) / (1 << 20)
	if *mode == "open" {
		res.Rate = *rate
	}
	codes := make([]string, 0, len(rec.codes))
	for k := range rec.codes {
		codes = append(codes, k)
	}
	sort.Strings(codes)
	fmt.Printf("%s %s rate=%.0f c=%d: %.1f req/s ok, p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f ms, errors %v, not sent %d\n",
		*method, *mode, res.Rate, *concurrency, res.ThroughputRPS, res.Latency["p50"],
		res.Latency["p90"], res.Latency["p99"], res.Latency["p99.9"], res.Latency["max"], rec.codes, notSent)
	if *jsonOut != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*jsonOut, data, 0o644); err != nil {
			log.Fatal(err)
		}
	}
}
