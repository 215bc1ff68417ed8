package assay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"os"
	"reflect"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The conformance tests need a live server: ASSAY_TARGET=host:port (skipped when unset).
// ASSAY_TOKEN, ASSAY_TLS_CA, ASSAY_TLS_CERT, ASSAY_TLS_KEY, ASSAY_TLS_SERVER_NAME
// configure auth and TLS.

type vtensor struct {
	DType  string    `json:"dtype"`
	Shape  []int64   `json:"shape"`
	Values []float64 `json:"values"`
	Bits   []uint16  `json:"bits"`
}

type vcase struct {
	Name     string                    `json:"name"`
	Strategy string                    `json:"strategy"`
	Budget   int64                     `json:"budget"`
	Seed     *uint64                   `json:"seed"`
	Exclude  []int64                   `json:"exclude"`
	Params   map[string]map[string]any `json:"params"`
	Inputs   map[string]vtensor        `json:"inputs"`
	Pool     *struct {
		ChunkBytes int                  `json:"chunk_bytes"`
		Appends    []map[string]vtensor `json:"appends"`
		Label      *struct {
			Indices []int64 `json:"indices"`
			Labels  []int64 `json:"labels"`
		} `json:"label"`
	} `json:"pool"`
	Expect struct {
		Error        string      `json:"error"`
		Indices      []int64     `json:"indices"`
		Scores       []jsonFloat `json:"scores"`
		RTol         float64     `json:"rtol"`
		ATol         float64     `json:"atol"`
		PseudoIdx    []int64     `json:"pseudo_label_indices"`
		PseudoLabels []int64     `json:"pseudo_labels"`
	} `json:"expect"`
}

// jsonFloat is a JSON number, or "Infinity", "-Infinity", "NaN" (JSON has no such numbers).
type jsonFloat float64

func (f *jsonFloat) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case `"Infinity"`:
		*f = jsonFloat(math.Inf(1))
	case `"-Infinity"`:
		*f = jsonFloat(math.Inf(-1))
	case `"NaN"`:
		*f = jsonFloat(math.NaN())
	default:
		var x float64
		if err := json.Unmarshal(b, &x); err != nil {
			return err
		}
		*f = jsonFloat(x)
	}
	return nil
}

func (v vtensor) tensor() (Tensor, error) {
	switch v.DType {
	case "FP16":
		return F16Bits(v.Bits, v.Shape...)
	case "BF16":
		return BF16Bits(v.Bits, v.Shape...)
	case "FP32":
		f := make([]float32, len(v.Values))
		for i, x := range v.Values {
			f[i] = float32(x)
		}
		return F32(f, v.Shape...)
	case "FP64":
		return F64(v.Values, v.Shape...)
	case "INT32":
		f := make([]int32, len(v.Values))
		for i, x := range v.Values {
			f[i] = int32(x)
		}
		return I32(f, v.Shape...)
	case "INT64":
		f := make([]int64, len(v.Values))
		for i, x := range v.Values {
			f[i] = int64(x)
		}
		return I64(f, v.Shape...)
	}
	return Tensor{}, fmt.Errorf("unknown dtype %s", v.DType)
}

func testClient(t *testing.T) (*Client, string) {
	target := os.Getenv("ASSAY_TARGET")
	if target == "" {
		t.Skip("ASSAY_TARGET is not set: no server to test against")
	}
	// Long enough for a first Select that compiles its kernel on a busy 2-core machine
	// (over 60 s was seen); a healthy warm server answers the vectors in milliseconds.
	opts := Options{Timeout: 300 * time.Second, Token: os.Getenv("ASSAY_TOKEN")}
	if ca := os.Getenv("ASSAY_TLS_CA"); ca != "" {
		opts.TLS, opts.CAFile = true, ca
		opts.CertFile, opts.KeyFile = os.Getenv("ASSAY_TLS_CERT"), os.Getenv("ASSAY_TLS_KEY")
		opts.ServerName = os.Getenv("ASSAY_TLS_SERVER_NAME")
	}
	c, err := Dial(context.Background(), target, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, target
}

func vectorsPath() string {
	if p := os.Getenv("ASSAY_VECTORS"); p != "" {
		return p
	}
	return "../../tests/vectors/select_vectors.json"
}

func runCase(ctx context.Context, c *Client, vc vcase) error {
	req := SelectRequest{Strategy: vc.Strategy, Budget: vc.Budget, Seed: vc.Seed,
		Exclude: vc.Exclude, Params: map[string]any{}}
	for k, v := range vc.Params {
		for kind, x := range v {
			if kind == "int" {
				x = int64(x.(float64))
			}
			req.Params[k] = x
		}
	}
	if vc.Pool != nil {
		id := "go-" + NewRequestID()[:12]
		if _, err := c.CreatePool(ctx, id); err != nil {
			return err
		}
		defer c.DeletePool(ctx, id)
		for _, part := range vc.Pool.Appends {
			var arrays []NamedTensor
			for role, v := range part {
				t, err := v.tensor()
				if err != nil {
					return err
				}
				arrays = append(arrays, NamedTensor{role, t})
			}
			if _, err := c.Append(ctx, id, arrays, vc.Pool.ChunkBytes, ""); err != nil {
				return err
			}
		}
		if l := vc.Pool.Label; l != nil {
			if _, err := c.Label(ctx, id, l.Indices, l.Labels, ""); err != nil {
				return err
			}
		}
		req.PoolID = id
	} else {
		req.Inputs = map[string]Tensor{}
		for role, v := range vc.Inputs {
			t, err := v.tensor()
			if err != nil {
				return err
			}
			req.Inputs[role] = t
		}
	}
	sel, err := c.Select(ctx, req)
	want := vc.Expect
	if want.Error != "" {
		var e *Error
		if !errors.As(err, &e) {
			return fmt.Errorf("expected %s, got %v", want.Error, err)
		}
		if e.CodeName() != want.Error {
			return fmt.Errorf("expected %s, got %v", want.Error, e)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(sel.Indices, want.Indices) {
		return fmt.Errorf("indices %v, want %v", sel.Indices, want.Indices)
	}
	if len(sel.Scores) != len(want.Scores) {
		return fmt.Errorf("%d scores, want %d", len(sel.Scores), len(want.Scores))
	}
	for i, ws := range want.Scores {
		w, got := float64(ws), sel.Scores[i]
		same := math.Abs(got-w) <= want.ATol+want.RTol*math.Abs(w)
		if math.IsInf(w, 0) || math.IsNaN(w) {
			same = got == w || (math.IsNaN(w) && math.IsNaN(got))
		}
		if !same {
			return fmt.Errorf("score %d = %v, want %v", i, got, w)
		}
	}
	if len(sel.PseudoLabelIndices)+len(want.PseudoIdx) > 0 &&
		(!reflect.DeepEqual(sel.PseudoLabelIndices, want.PseudoIdx) ||
			!reflect.DeepEqual(sel.PseudoLabels, want.PseudoLabels)) {
		return fmt.Errorf("pseudo labels differ")
	}
	return nil
}

func TestConformanceVectors(t *testing.T) {
	c, _ := testClient(t)
	raw, err := os.ReadFile(vectorsPath())
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Cases []vcase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, vc := range doc.Cases {
		vc := vc
		t.Run(vc.Name, func(t *testing.T) {
			if err := runCase(context.Background(), c, vc); err != nil {
				failed++
				t.Error(err)
			}
		})
	}
	t.Logf("conformance: %d passed, %d failed", len(doc.Cases)-failed, failed)
}

func entropyRequest(t *testing.T) SelectRequest {
	probs, err := F32([]float32{0.9, 0.1, 0.5, 0.5, 0.6, 0.4, 0.99, 0.01}, 4, 2)
	if err != nil {
		t.Fatal(err)
	}
	return SelectRequest{Strategy: "entropy", Budget: 2, Inputs: map[string]Tensor{"probs": probs}}
}

func TestListStrategies(t *testing.T) {
	c, _ := testClient(t)
	all, err := c.ListStrategies(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.Name == "entropy" && reflect.DeepEqual(s.RequiredInputs, []string{"probs"}) {
			return
		}
	}
	t.Fatal("entropy with required input probs is not listed")
}

func TestRetriedRequestIDIsIdempotent(t *testing.T) {
	c, _ := testClient(t)
	ctx := context.Background()
	req := entropyRequest(t)
	req.RequestID = NewRequestID()
	a, err := c.Select(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Select(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a.Indices, []int64{1, 2}) || !reflect.DeepEqual(a, b) {
		t.Fatalf("retry answered differently: %+v vs %+v", a, b)
	}
	req.Budget = 3
	_, err = c.Select(ctx, req)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("same id, different request: got %v", err)
	}
}

func TestUnavailableIsRetriedThenReturned(t *testing.T) {
	testClient(t)
	dead, err := Dial(context.Background(), "127.0.0.1:1", Options{Retries: 2, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	// gRPC retries it by the service config (retry_test.go counts the attempts).
	_, err = dead.Select(context.Background(), entropyRequest(t))
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.Unavailable {
		t.Fatalf("want UNAVAILABLE, got %v", err)
	}
}

func TestDeadlineOnEveryCall(t *testing.T) {
	c, _ := testClient(t)
	big, _ := F32(make([]float32, 400_000*10), 400_000, 10)
	_, err := c.Select(context.Background(), SelectRequest{Strategy: "entropy", Budget: 1,
		Inputs: map[string]Tensor{"probs": big}, Timeout: time.Millisecond})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("want DEADLINE_EXCEEDED, got %v", err)
	}
}

func TestPoolLifecycle(t *testing.T) {
	c, _ := testClient(t)
	ctx := context.Background()
	id := "go-life-" + NewRequestID()[:8]
	if _, err := c.CreatePool(ctx, id); err != nil {
		t.Fatal(err)
	}
	emb := make([]float32, 1000*3)
	for i := range emb {
		emb[i] = float32(i % 17)
	}
	et, _ := F32(emb, 1000, 3)
	r, err := c.Append(ctx, id, []NamedTensor{{"embeddings", et}}, 1024, "")
	if err != nil || r.AppendedCount != 1000 || !reflect.DeepEqual(r.Pool.Arrays[0].Shape, []int64{1000, 3}) {
		t.Fatalf("append: %+v %v", r, err)
	}
	p, err := c.Label(ctx, id, []int64{4, 5}, []int64{1, 0}, "")
	if err != nil || p.LabeledCount != 2 {
		t.Fatalf("label: %+v %v", p, err)
	}
	pools, err := c.ListPools(ctx, 2)
	found := false
	for _, q := range pools {
		found = found || q.PoolID == id
	}
	if err != nil || !found {
		t.Fatalf("list: %v", err)
	}
	if err := c.DeletePool(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetPool(ctx, id); status.Code(err) != codes.NotFound {
		t.Fatalf("deleted pool: %v", err)
	}
	// A stream the server rejects reports the server's status, not io.EOF.
	_, err = c.Append(ctx, id, []NamedTensor{{"embeddings", et}}, 1024, "")
	if status.Code(err) != codes.NotFound {
		t.Fatalf("append to a missing pool: %v", err)
	}
}

func TestReplaceRound(t *testing.T) {
	c, _ := testClient(t)
	ctx := context.Background()
	id := "go-round-" + NewRequestID()[:8]
	const n, k = 60, 3
	rng := rand.New(rand.NewSource(11))
	roundProbs := func() Tensor {
		p := make([]float32, n*k)
		for i := 0; i < n; i++ {
			var sum float32
			for j := 0; j < k; j++ {
				p[i*k+j] = 0.05 + 0.95*rng.Float32()
				sum += p[i*k+j]
			}
			for j := 0; j < k; j++ {
				p[i*k+j] /= sum
			}
		}
		tt, err := F32(p, n, k)
		if err != nil {
			t.Fatal(err)
		}
		return tt
	}
	first, second := roundProbs(), roundProbs()
	if _, err := c.CreatePool(ctx, id); err != nil {
		t.Fatal(err)
	}
	defer c.DeletePool(ctx, id)
	if _, err := c.Append(ctx, id, []NamedTensor{{"probs", first}}, 256, ""); err != nil {
		t.Fatal(err)
	}
	labeled, err := c.Label(ctx, id, []int64{7}, []int64{2}, "")
	if err != nil {
		t.Fatal(err)
	}
	after, err := c.Replace(ctx, id, []NamedTensor{{"probs", second}}, 256, "")
	if err != nil {
		t.Fatal(err)
	}
	if after.Version <= labeled.Version || after.ItemCount != n || after.LabeledCount != 1 {
		t.Fatalf("replace: %+v after %+v", after, labeled)
	}
	got, err := c.Select(ctx, SelectRequest{Strategy: "entropy", Budget: 5, PoolID: id})
	if err != nil {
		t.Fatal(err)
	}
	want, err := c.Select(ctx, SelectRequest{Strategy: "entropy", Budget: 5,
		Inputs: map[string]Tensor{"probs": second}, Exclude: []int64{7}})
	if err != nil {
		t.Fatal(err)
	}
	if got.PoolVersion != after.Version || !reflect.DeepEqual(got.Indices, want.Indices) {
		t.Fatalf("pool select %+v, inline select %+v, pool version %d", got, want, after.Version)
	}
	for i := range want.Scores {
		if math.Abs(got.Scores[i]-want.Scores[i]) > 1e-6+1e-6*math.Abs(want.Scores[i]) {
			t.Fatalf("score %d: %v vs %v", i, got.Scores[i], want.Scores[i])
		}
	}
	// A replace that does not cover the pool's items is refused and changes nothing.
	short := Tensor{DType: FP32, Shape: []int64{n - 1, k}, Data: second.Data[:(n-1)*k*4]}
	if _, err := c.Replace(ctx, id, []NamedTensor{{"probs", short}}, 0, ""); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("replace of n-1 items: %v", err)
	}
	if p, err := c.GetPool(ctx, id); err != nil || p.Version != after.Version {
		t.Fatalf("a refused replace changed the pool: %+v %v", p, err)
	}
}

func TestBearerTokenRequired(t *testing.T) {
	_, target := testClient(t)
	if os.Getenv("ASSAY_TOKEN") == "" {
		t.Skip("the server under test has no token (ASSAY_TOKEN unset)")
	}
	opts := Options{Timeout: 10 * time.Second}
	if ca := os.Getenv("ASSAY_TLS_CA"); ca != "" {
		opts.TLS, opts.CAFile = true, ca
		opts.CertFile, opts.KeyFile = os.Getenv("ASSAY_TLS_CERT"), os.Getenv("ASSAY_TLS_KEY")
		opts.ServerName = os.Getenv("ASSAY_TLS_SERVER_NAME")
	}
	anon, err := Dial(context.Background(), target, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.ListStrategies(context.Background()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("want UNAUTHENTICATED, got %v", err)
	}
}
