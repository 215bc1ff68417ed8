package assay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	assayv1 "github.com/assay-dev/assay/clients/go/gen/assayv1"
)

// ModelInput is a graph input of a registered model and the pool array that feeds it.
type ModelInput struct {
	Name  string
	DType DType
	// Shape as declared; -1 marks a dynamic axis. Axis 0 is the item axis.
	Shape []int64
	// Array is "model_inputs" or "model_inputs.<name>".
	Array string
}

// Model is a registered ONNX model's metadata.
type Model struct {
	ModelID string
	// Outputs maps role ("logits" or "probs", "embeddings", "loss", "discriminator")
	// to the graph output's name.
	Outputs map[string]string
	// Inputs lists every graph input, in the graph's order.
	Inputs       []ModelInput
	SizeBytes    int64
	SHA256       string // lower-case hex
	OpsetVersion int64
	// DropoutCount is the number of Dropout nodes; SelectRequest.MCSamples needs one or more.
	DropoutCount int32
	CreateTime   time.Time
}

// ModelSpec is how a model is registered.
type ModelSpec struct {
	// Outputs maps role to graph output name; at least one of "logits" or "probs",
	// "embeddings", "loss", "discriminator".
	Outputs map[string]string
	// Inputs maps graph input name to the array that feeds it ("model_inputs" or
	// "model_inputs.<name>"). Empty: one graph input reads "model_inputs", several read
	// "model_inputs.<input name>" each. When given, every graph input is bound once.
	Inputs map[string]string
	// ChunkBytes is the size of each streamed chunk (4 MiB when 0).
	ChunkBytes int
	// Timeout overrides Options.Timeout for the upload.
	Timeout time.Duration
}

func model(m *assayv1.Model) Model {
	out := Model{ModelID: m.ModelId, Outputs: map[string]string{}, SizeBytes: m.SizeBytes,
		SHA256: m.Sha256, OpsetVersion: m.OpsetVersion, DropoutCount: m.DropoutCount}
	for _, b := range m.Outputs {
		out.Outputs[b.Role] = b.OutputName
	}
	for _, i := range m.Inputs {
		out.Inputs = append(out.Inputs, ModelInput{i.Name, DType(i.Dtype), i.Shape, i.Array})
	}
	if m.CreateTime != nil {
		out.CreateTime = m.CreateTime.AsTime()
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// modelHeader is the first message of a RegisterModel stream; bindings go in key order.
func modelHeader(modelID string, size int64, digest string, spec ModelSpec) *assayv1.RegisterModelHeader {
	h := &assayv1.RegisterModelHeader{ModelId: modelID, SizeBytes: size, Sha256: digest}
	for _, role := range sortedKeys(spec.Outputs) {
		h.Outputs = append(h.Outputs, &assayv1.OutputBinding{Role: role, OutputName: spec.Outputs[role]})
	}
	for _, name := range sortedKeys(spec.Inputs) {
		h.Inputs = append(h.Inputs, &assayv1.InputBinding{InputName: name, Array: spec.Inputs[name]})
	}
	return h
}

// sendModel sends the header, then exactly size bytes of r in chunks of chunkBytes (4 MiB
// when 0) through send.
func sendModel(h *assayv1.RegisterModelHeader, r io.Reader, chunkBytes int,
	send func(*assayv1.RegisterModelRequest) error) error {
	if chunkBytes <= 0 {
		chunkBytes = 4 << 20
	}
	if err := send(&assayv1.RegisterModelRequest{
		Part: &assayv1.RegisterModelRequest_Header{Header: h}}); err != nil {
		return err
	}
	for left := h.SizeBytes; left > 0; {
		n := int64(chunkBytes)
		if n > left {
			n = left
		}
		// A fresh buffer per chunk: Send may keep a reference until the message is written.
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("assay: model file shorter than its %d bytes: %w", h.SizeBytes, err)
		}
		if err := send(&assayv1.RegisterModelRequest{
			Part: &assayv1.RegisterModelRequest_Chunk{Chunk: buf}}); err != nil {
			return err
		}
		left -= n
	}
	return nil
}

// RegisterModel uploads an ONNX model under modelID, streamed in chunks with its SHA-256,
// which the server verifies before storing anything. ALREADY_EXISTS if the id is taken;
// INVALID_ARGUMENT (with the Reason and Field) for a model, output or input binding the
// server refuses.
func (c *Client) RegisterModel(ctx context.Context, modelID string, onnx []byte,
	spec ModelSpec) (Model, error) {
	sum := sha256.Sum256(onnx)
	return c.registerModel(ctx, modelHeader(modelID, int64(len(onnx)), hex.EncodeToString(sum[:]), spec),
		bytes.NewReader(onnx), spec)
}

// RegisterModelFile is RegisterModel for the ONNX file at path, read twice (the digest,
// then the upload) rather than held in memory.
func (c *Client) RegisterModelFile(ctx context.Context, modelID, path string,
	spec ModelSpec) (Model, error) {
	f, err := os.Open(path)
	if err != nil {
		return Model{}, err
	}
	defer f.Close()
	hash := sha256.New()
	size, err := io.Copy(hash, f)
	if err != nil {
		return Model{}, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return Model{}, err
	}
	return c.registerModel(ctx, modelHeader(modelID, size, hex.EncodeToString(hash.Sum(nil)), spec),
		f, spec)
}

func (c *Client) registerModel(ctx context.Context, h *assayv1.RegisterModelHeader, r io.Reader,
	spec ModelSpec) (Model, error) {
	cctx, cancel := c.callCtx(ctx, spec.Timeout)
	defer cancel()
	stream, err := c.models.RegisterModel(cctx)
	if err != nil {
		return Model{}, wrap(err)
	}
	err = sendModel(h, r, spec.ChunkBytes, func(m *assayv1.RegisterModelRequest) error {
		return sendOrStatus(stream.Send(m), func() error { _, err := stream.CloseAndRecv(); return err })
	})
	if err != nil {
		return Model{}, wrap(err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return Model{}, wrap(err)
	}
	return model(resp.Model), nil
}

// GetModel returns a model's metadata; NOT_FOUND if there is none.
func (c *Client) GetModel(ctx context.Context, modelID string) (Model, error) {
	cctx, cancel := c.callCtx(ctx, 0)
	defer cancel()
	r, err := c.models.GetModel(cctx, &assayv1.GetModelRequest{ModelId: modelID})
	if err != nil {
		return Model{}, wrap(err)
	}
	return model(r.Model), nil
}

// ListModels returns every registered model in id order, following pagination
// (pageSize per call; the server's default when 0).
func (c *Client) ListModels(ctx context.Context, pageSize int32) ([]Model, error) {
	var out []Model
	token := ""
	for {
		cctx, cancel := c.callCtx(ctx, 0)
		r, err := c.models.ListModels(cctx, &assayv1.ListModelsRequest{PageSize: pageSize, PageToken: token})
		cancel()
		if err != nil {
			return nil, wrap(err)
		}
		for _, m := range r.Models {
			out = append(out, model(m))
		}
		if token = r.NextPageToken; token == "" {
			return out, nil
		}
	}
}

// DeleteModel deletes a model and its file; NOT_FOUND if there is none.
func (c *Client) DeleteModel(ctx context.Context, modelID string) error {
	cctx, cancel := c.callCtx(ctx, 0)
	defer cancel()
	_, err := c.models.DeleteModel(cctx, &assayv1.DeleteModelRequest{ModelId: modelID})
	return wrap(err)
}
