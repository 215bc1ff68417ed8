package assay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	assayv1 "github.com/assay-dev/assay/clients/go/gen/assayv1"

	"google.golang.org/grpc/codes"
)

// Registered models: the request building offline, then the model vectors
// (tests/clients/model_vectors.py) against a live server, with ASSAY_TARGET and
// ASSAY_MODEL_VECTORS (the directory holding model.json and model.onnx) set.

func TestSelectCarriesModelsAndNamedInputs(t *testing.T) {
	ids, _ := I64([]int64{1, 2, 3, 4}, 2, 2)
	mask, _ := I64([]int64{1, 1, 1, 0}, 2, 2)
	req, err := BuildSelect(SelectRequest{Strategy: "bald", Budget: 1, Models: []string{"m"},
		MCSamples: 4, BatchSize: 8, Inputs: map[string]Tensor{
			"model_inputs.input_ids": ids, "model_inputs.attention_mask": mask}})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(req.ModelIds, []string{"m"}) || req.McSamples != 4 || req.BatchSize != 8 {
		t.Fatalf("got model_ids %v, mc_samples %d, batch_size %d", req.ModelIds, req.McSamples,
			req.BatchSize)
	}
	named := req.GetInputs().GetNamedModelInputs()
	if len(named) != 2 || !bytes.Equal(named["input_ids"].Data, ids.Data) ||
		!bytes.Equal(named["attention_mask"].Data, mask.Data) {
		t.Fatalf("named_model_inputs %v", named)
	}
	if req.GetInputs().GetModelInputs() != nil {
		t.Fatalf("the unnamed model_inputs was set")
	}
	if _, err := BuildSelect(SelectRequest{Strategy: "bald", Budget: 1,
		Inputs: map[string]Tensor{"model_inputs.": ids}}); err == nil {
		t.Fatalf("an empty input name was accepted")
	}
}

func TestRegisterStreamsHeaderThenChunks(t *testing.T) {
	data := make([]byte, 10_000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	sum := sha256.Sum256(data)
	h := modelHeader("m", int64(len(data)), hex.EncodeToString(sum[:]), ModelSpec{
		Outputs: map[string]string{"logits": "out", "embeddings": "feat"},
		Inputs:  map[string]string{"input_ids": "model_inputs.ids", "attention_mask": "model_inputs.mask"}})
	var sent []*assayv1.RegisterModelRequest
	err := sendModel(h, bytes.NewReader(data), 4096, func(m *assayv1.RegisterModelRequest) error {
		sent = append(sent, m)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) != 4 || sent[0].GetHeader() != h {
		t.Fatalf("want the header and 3 chunks, got %d messages", len(sent))
	}
	var got []byte
	for i, m := range sent[1:] {
		if want := []int{4096, 4096, 1808}[i]; len(m.GetChunk()) != want {
			t.Fatalf("chunk %d has %d bytes, want %d", i, len(m.GetChunk()), want)
		}
		got = append(got, m.GetChunk()...)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("the chunks do not rebuild the file")
	}
	if h.Outputs[0].Role != "embeddings" || h.Outputs[1].Role != "logits" ||
		h.Inputs[0].InputName != "attention_mask" || h.Inputs[1].Array != "model_inputs.ids" {
		t.Fatalf("bindings %v %v", h.Outputs, h.Inputs)
	}
	// A reader that ends early is an error, not a short upload.
	err = sendModel(h, bytes.NewReader(data[:5000]), 4096, func(*assayv1.RegisterModelRequest) error {
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "shorter") {
		t.Fatalf("short file: %v", err)
	}
}

// mtensor is a model-vector array: a numpy dtype name, a shape and the values.
type mtensor struct {
	DType string    `json:"dtype"`
	Shape []int64   `json:"shape"`
	Data  []float64 `json:"data"`
}

func (v mtensor) tensor() (Tensor, error) {
	switch v.DType {
	case "int64":
		x := make([]int64, len(v.Data))
		for i, d := range v.Data {
			x[i] = int64(d)
		}
		return I64(x, v.Shape...)
	case "int32":
		x := make([]int32, len(v.Data))
		for i, d := range v.Data {
			x[i] = int32(d)
		}
		return I32(x, v.Shape...)
	case "float32":
		x := make([]float32, len(v.Data))
		for i, d := range v.Data {
			x[i] = float32(d)
		}
		return F32(x, v.Shape...)
	case "float64":
		return F64(v.Data, v.Shape...)
	}
	return Tensor{}, fmt.Errorf("unknown dtype %q", v.DType)
}

type modelVectors struct {
	ModelFile         string             `json:"model_file"`
	Outputs           map[string]string  `json:"outputs"`
	Inputs            map[string]mtensor `json:"inputs"`
	Labeled           []int64            `json:"labeled"`
	Labels            []int64            `json:"labels"`
	ExecutionProvider string             `json:"execution_provider"`
	Cases             []struct {
		Name      string    `json:"name"`
		Strategy  string    `json:"strategy"`
		Source    string    `json:"source"`
		Budget    int64     `json:"budget"`
		MCSamples int32     `json:"mc_samples"`
		Seed      uint64    `json:"seed"`
		BatchSize int32     `json:"batch_size"`
		Indices   []int64   `json:"indices"`
		Scores    []float64 `json:"scores"`
		Tolerance float64   `json:"tolerance"`
	} `json:"cases"`
}

func TestModelVectors(t *testing.T) {
	c, _ := testClient(t)
	dir := os.Getenv("ASSAY_MODEL_VECTORS")
	if dir == "" {
		t.Skip("ASSAY_MODEL_VECTORS is not set: no model vectors to replay")
	}
	raw, err := os.ReadFile(filepath.Join(dir, "model.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v modelVectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	const modelID, poolID = "text-go", "texts-go"
	ctx := context.Background()
	path := filepath.Join(dir, v.ModelFile)
	onnx, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	// A binding to a graph input the model lacks is refused, and stores nothing.
	_, err = c.RegisterModel(ctx, modelID, onnx, ModelSpec{Outputs: v.Outputs,
		Inputs: map[string]string{"no_such_input": "model_inputs"}})
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.InvalidArgument || e.Reason != "INPUT_NOT_FOUND" ||
		!strings.HasSuffix(e.Field, "input_name") {
		t.Fatalf("binding a missing graph input: want INVALID_ARGUMENT INPUT_NOT_FOUND on "+
			"an input_name field, got %v (%+v)", err, e)
	}

	// From the file, streamed in small chunks so that the upload takes several messages.
	m, err := c.RegisterModelFile(ctx, modelID, path, ModelSpec{Outputs: v.Outputs, ChunkBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.DeleteModel(ctx, modelID); err != nil {
			t.Errorf("delete model: %v", err)
		}
	})
	sum := sha256.Sum256(onnx)
	if m.ModelID != modelID || m.SizeBytes != int64(len(onnx)) || m.SHA256 != hex.EncodeToString(sum[:]) ||
		!reflect.DeepEqual(m.Outputs, v.Outputs) {
		t.Fatalf("registered %+v", m)
	}
	var arrays, want []string
	for _, in := range m.Inputs {
		arrays = append(arrays, in.Array)
	}
	for name := range v.Inputs {
		want = append(want, namedModelInputs+name)
	}
	sort.Strings(arrays)
	sort.Strings(want)
	if !reflect.DeepEqual(arrays, want) {
		t.Fatalf("inputs read %v, want %v", arrays, want)
	}
	if got, err := c.GetModel(ctx, modelID); err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("GetModel: %+v, %v; registered %+v", got, err, m)
	}
	listed, err := c.ListModels(ctx, 1) // one per page: pagination is followed
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range listed {
		found = found || x.ModelID == modelID
	}
	if !found {
		t.Fatalf("ListModels misses %s: %v", modelID, listed)
	}

	// The raw inputs, as pool arrays model_inputs.<name> and inline by the same names.
	var named []NamedTensor
	inline := map[string]Tensor{}
	for name, x := range v.Inputs {
		tensor, err := x.tensor()
		if err != nil {
			t.Fatal(err)
		}
		named = append(named, NamedTensor{namedModelInputs + name, tensor})
		inline[namedModelInputs+name] = tensor
	}
	if _, err := c.CreatePool(ctx, poolID); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.DeletePool(ctx, poolID); err != nil {
			t.Errorf("delete pool: %v", err)
		}
	})
	if _, err := c.Append(ctx, poolID, named, 0, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Label(ctx, poolID, v.Labeled, v.Labels, ""); err != nil {
		t.Fatal(err)
	}
	for _, vc := range v.Cases {
		seed := vc.Seed
		req := SelectRequest{Strategy: vc.Strategy, Budget: vc.Budget, Models: []string{modelID},
			MCSamples: vc.MCSamples, BatchSize: vc.BatchSize, Seed: &seed}
		if vc.Source == "pool" {
			req.PoolID = poolID
		} else {
			req.Inputs = inline
		}
		sel, err := c.Select(ctx, req)
		if err != nil {
			t.Fatalf("%s: %v", vc.Name, err)
		}
		if !reflect.DeepEqual(sel.Indices, vc.Indices) {
			t.Fatalf("%s (seed %d): indices %v, want %v", vc.Name, seed, sel.Indices, vc.Indices)
		}
		if len(sel.Scores) != len(vc.Scores) {
			t.Fatalf("%s: %d scores, want %d", vc.Name, len(sel.Scores), len(vc.Scores))
		}
		for i, want := range vc.Scores {
			if got := sel.Scores[i]; math.Abs(got-want) > vc.Tolerance*math.Abs(want)+1e-9 {
				t.Fatalf("%s (seed %d): score %d is %v, want %v (rtol %g)", vc.Name, seed, i, got,
					want, vc.Tolerance)
			}
		}
		if !reflect.DeepEqual(sel.ExecutionProviders, []string{v.ExecutionProvider}) {
			t.Fatalf("%s: execution providers %v, want [%s]", vc.Name, sel.ExecutionProviders,
				v.ExecutionProvider)
		}
		t.Logf("%s: %v", vc.Name, sel.Indices)
	}
}
