// Package assay is the Go client of Assay, the active-learning acquisition service.
//
//	c, err := assay.Dial(ctx, "127.0.0.1:50051", assay.Options{})
//	probs, _ := assay.F32(p, n, classes)              // []float32, row-major [N, C]
//	sel, err := c.Select(ctx, assay.SelectRequest{
//		Strategy: "entropy", Budget: 10, Inputs: map[string]assay.Tensor{"probs": probs}})
//	// sel.Indices: best first
//
// Every call gets one deadline (Options.Timeout unless ctx has one) that covers all
// its attempts: gRPC itself retries UNAVAILABLE for the methods that are safe to send
// twice, by the contract's service config (service_config.json, a copy of
// protos/assay/v1/service_config.json embedded in the package; ServiceConfig returns
// it), and the writes among them carry a request id. grpc-go before 1.40 retries only
// when the process starts with GRPC_GO_RETRY=on. Errors are *Error values that
// carry the gRPC status code and the server's Reason, Field and RetryDelay
// (status.FromError works on them too).
package assay

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	assayv1 "github.com/assay-dev/assay/clients/go/gen/assayv1"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Options configure a Client. The zero value is a plaintext client with defaults.
type Options struct {
	// Timeout is the deadline of each call whose context has none (default 60 s).
	Timeout time.Duration
	// Retries is the number of extra attempts on UNAVAILABLE of the methods that are safe
	// to send twice (0: the service config's policy, at most 3; -1: none).
	Retries int
	// TLS: set TLS, and CAFile for a private CA; CertFile and KeyFile for mTLS.
	TLS        bool
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string
	// Token is sent as "authorization: Bearer <token>".
	Token string
	// MaxMessageBytes bounds sent and received messages (default 64 MiB).
	MaxMessageBytes int
}

// Error is a failed call, with what a program needs to act on it: the gRPC status
// code, the server's message (for people), and from the status details
// (google.rpc.ErrorInfo and RetryInfo, see docs/errors.md) the stable Reason to branch
// on ("DISK_FULL", "TOO_MANY_REQUESTS", ...; empty for a status that did not come
// from Assay, such as a transport error), the offending request Field (empty: none)
// and RetryDelay, the server's back-off hint for a refusal that the same request may
// retry (0: none).
type Error struct {
	Code       codes.Code
	Message    string
	Reason     string
	Field      string
	RetryDelay time.Duration
	status     *status.Status
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("assay: %s %s: %s", codeName(e.Code), e.Reason, e.Message)
	}
	return fmt.Sprintf("assay: %s: %s", codeName(e.Code), e.Message)
}

// GRPCStatus lets status.FromError and status.Code see the original status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// CodeName is the canonical name of the code, e.g. "INVALID_ARGUMENT".
func (e *Error) CodeName() string { return codeName(e.Code) }

var codeNames = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
	"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
	"DATA_LOSS", "UNAUTHENTICATED"}

func codeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return c.String()
}

func wrap(err error) error {
	if err == nil {
		return nil
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	return fromStatus(s)
}

// errorDomain is the ErrorInfo domain of Assay's own errors.
const errorDomain = "assay.v1"

// fromStatus reads the code, message and the ErrorInfo / RetryInfo details of s.
func fromStatus(s *status.Status) *Error {
	e := &Error{Code: s.Code(), Message: s.Message(), status: s}
	for _, d := range s.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == errorDomain {
				e.Reason, e.Field = d.GetReason(), d.GetMetadata()["field"]
			}
		case *errdetails.RetryInfo:
			if d.GetRetryDelay() != nil {
				e.RetryDelay = d.GetRetryDelay().AsDuration()
			}
		}
	}
	return e
}

// Client is a connection to an Assay server; safe for concurrent use.
type Client struct {
	conn   *grpc.ClientConn
	stub   assayv1.AssayServiceClient
	models assayv1.ModelServiceClient
	opts   Options
}

// Dial connects to target ("host:port"); the connection is made lazily.
func Dial(ctx context.Context, target string, opts Options) (*Client, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 60 * time.Second
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = 64 << 20
	}
	dial := []grpc.DialOption{grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(opts.MaxMessageBytes), grpc.MaxCallSendMsgSize(opts.MaxMessageBytes))}
	if opts.Retries < 0 {
		dial = append(dial, grpc.WithDisableRetry())
	} else {
		config, err := ServiceConfig(opts.Retries)
		if err != nil {
			return nil, err
		}
		dial = append(dial, grpc.WithDefaultServiceConfig(config))
	}
	if opts.TLS {
		cfg := &tls.Config{ServerName: opts.ServerName, MinVersion: tls.VersionTLS12}
		if opts.CAFile != "" {
			pem, err := os.ReadFile(opts.CAFile)
			if err != nil {
				return nil, err
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("assay: no certificates in %s", opts.CAFile)
			}
		}
		if opts.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
			if err != nil {
				return nil, err
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	conn, err := grpc.DialContext(ctx, target, dial...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, stub: assayv1.NewAssayServiceClient(conn),
		models: assayv1.NewModelServiceClient(conn), opts: opts}, nil
}

//go:embed service_config.json
var serviceConfigJSON []byte

// ServiceConfig is the contract's gRPC service config (JSON), which every Assay client
// uses: retryPolicy on UNAVAILABLE for the methods that are safe to send twice. retries
// > 0 replaces its extra attempts (maxAttempts = retries + 1; gRPC caps attempts at 5);
// 0 keeps the shipped policy.
func ServiceConfig(retries int) (string, error) {
	if retries <= 0 {
		return string(serviceConfigJSON), nil
	}
	var config map[string]any
	if err := json.Unmarshal(serviceConfigJSON, &config); err != nil {
		return "", err
	}
	methods, _ := config["methodConfig"].([]any)
	for _, m := range methods {
		if policy, ok := m.(map[string]any)["retryPolicy"].(map[string]any); ok {
			policy["maxAttempts"] = retries + 1
		}
	}
	out, err := json.Marshal(config)
	return string(out), err
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) callCtx(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if c.opts.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.opts.Token)
	}
	if timeout == 0 {
		timeout = c.opts.Timeout
	}
	if _, has := ctx.Deadline(); has {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, timeout)
}

// NewRequestID returns a random (version 4) UUID.
func NewRequestID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// SelectRequest asks for Budget items by Strategy, from inline Inputs or a stored PoolID.
type SelectRequest struct {
	Strategy string
	Budget   int64
	// Inputs by role: "probs", "samples", "embeddings", "labeled_embeddings", "scores",
	// "loss", "discriminator", "predictions", "labeled_probs", "labels", "model_inputs",
	// "target_samples" (inline only), and "model_inputs.<name>" for the named raw inputs of a model with several graph
	// inputs ("model_inputs.input_ids", "model_inputs.attention_mask").
	Inputs map[string]Tensor
	PoolID string
	// Models are registered model ids (RegisterModel) that the server runs over the raw
	// model inputs (inline, or the pool's) to produce the strategy's inputs; several form
	// a committee.
	Models []string
	// MCSamples > 0 runs each model that many times with its Dropout nodes sampling (MC
	// dropout), keyed by Seed.
	MCSamples int32
	// BatchSize is the number of items per inference batch (0: the server's choice).
	BatchSize int32
	// Params values are float64, int/int64, string or bool.
	Params  map[string]any
	Seed    *uint64
	Exclude []int64
	// RequestID makes retries idempotent; a UUID is generated when empty.
	RequestID string
	// Timeout overrides Options.Timeout for this call.
	Timeout time.Duration
}

// Selection is a Select answer.
type Selection struct {
	Indices            []int64
	Scores             []float64
	Strategy           string
	Backend            string
	Seed               uint64
	PoolVersion        int64
	RequestID          string
	Metrics            map[string]float64
	PseudoLabelIndices []int64
	PseudoLabels       []int64
	ComputeSeconds     float64
	// ExecutionProviders: per entry of SelectRequest.Models, the onnxruntime execution
	// provider that ran it ("CPUExecutionProvider", "CUDAExecutionProvider", ...).
	ExecutionProviders []string
}

func paramProto(name string, v any) (*assayv1.ParamValue, error) {
	switch x := v.(type) {
	case float64:
		return &assayv1.ParamValue{Kind: &assayv1.ParamValue_DoubleValue{DoubleValue: x}}, nil
	case float32:
		return &assayv1.ParamValue{Kind: &assayv1.ParamValue_DoubleValue{DoubleValue: float64(x)}}, nil
	case int:
		return &assayv1.ParamValue{Kind: &assayv1.ParamValue_IntValue{IntValue: int64(x)}}, nil
	case int64:
		return &assayv1.ParamValue{Kind: &assayv1.ParamValue_IntValue{IntValue: x}}, nil
	case string:
		return &assayv1.ParamValue{Kind: &assayv1.ParamValue_StringValue{StringValue: x}}, nil
	case bool:
		return &assayv1.ParamValue{Kind: &assayv1.ParamValue_BoolValue{BoolValue: x}}, nil
	}
	return nil, fmt.Errorf("assay: params[%q] has unsupported type %T", name, v)
}

// namedModelInputs prefixes the raw inputs of a model with several graph inputs, inline
// (Inputs.named_model_inputs) and as pool array names.
const namedModelInputs = "model_inputs."

func setInput(in *assayv1.Inputs, role string, t *assayv1.Tensor) error {
	switch role {
	case "probs":
		in.Probs = t
	case "samples":
		in.Samples = t
	case "embeddings":
		in.Embeddings = t
	case "labeled_embeddings":
		in.LabeledEmbeddings = t
	case "scores":
		in.Scores = t
	case "loss":
		in.Loss = t
	case "discriminator":
		in.Discriminator = t
	case "predictions":
		in.Predictions = t
	case "labeled_probs":
		in.LabeledProbs = t
	case "labels":
		in.Labels = t
	case "model_inputs":
		in.ModelInputs = t
	case "target_samples":
		in.TargetSamples = t
	default:
		if name := strings.TrimPrefix(role, namedModelInputs); name != role && name != "" {
			if in.NamedModelInputs == nil {
				in.NamedModelInputs = map[string]*assayv1.Tensor{}
			}
			in.NamedModelInputs[name] = t
			return nil
		}
		return fmt.Errorf("assay: unknown input role %q", role)
	}
	return nil
}

// BuildSelect turns a SelectRequest into its wire message (the load generator reuses it).
func BuildSelect(r SelectRequest) (*assayv1.SelectRequest, error) {
	req := &assayv1.SelectRequest{Strategy: r.Strategy, Budget: r.Budget, Seed: r.Seed,
		RequestId: r.RequestID, ExcludeIndices: r.Exclude, Params: map[string]*assayv1.ParamValue{},
		ModelIds: r.Models, McSamples: r.MCSamples, BatchSize: r.BatchSize}
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	for k, v := range r.Params {
		p, err := paramProto(k, v)
		if err != nil {
			return nil, err
		}
		req.Params[k] = p
	}
	if r.PoolID != "" {
		req.Source = &assayv1.SelectRequest_PoolId{PoolId: r.PoolID}
	} else {
		in := &assayv1.Inputs{}
		for role, t := range r.Inputs {
			if err := setInput(in, role, t.proto()); err != nil {
				return nil, err
			}
		}
		req.Source = &assayv1.SelectRequest_Inputs{Inputs: in}
	}
	return req, nil
}

// Select runs a strategy. gRPC retries it on UNAVAILABLE, by the service config, with
// the same request id, within the call's one deadline.
func (c *Client) Select(ctx context.Context, r SelectRequest) (*Selection, error) {
	req, err := BuildSelect(r)
	if err != nil {
		return nil, err
	}
	cctx, cancel := c.callCtx(ctx, r.Timeout)
	resp, err := c.stub.Select(cctx, req)
	cancel()
	if err != nil {
		return nil, wrap(err)
	}
	return &Selection{Indices: resp.Indices, Scores: resp.Scores, Strategy: resp.Strategy,
		Backend: resp.Backend, Seed: resp.Seed, PoolVersion: resp.PoolVersion,
		RequestID: resp.RequestId, Metrics: resp.Metrics,
		PseudoLabelIndices: resp.PseudoLabelIndices, PseudoLabels: resp.PseudoLabels,
		ComputeSeconds: resp.ComputeSeconds, ExecutionProviders: resp.ExecutionProviders}, nil
}

// ParamInfo declares one strategy parameter.
type ParamInfo struct {
	Name, Type, Description string
	Default                 any
	Minimum, Maximum        *float64
	Choices                 []string
}

// StrategyInfo describes one strategy.
type StrategyInfo struct {
	Name, Kind, Description        string
	RequiredInputs, OptionalInputs []string
	Params                         []ParamInfo
}

func paramValue(p *assayv1.ParamValue) any {
	switch k := p.GetKind().(type) {
	case *assayv1.ParamValue_DoubleValue:
		return k.DoubleValue
	case *assayv1.ParamValue_IntValue:
		return k.IntValue
	case *assayv1.ParamValue_StringValue:
		return k.StringValue
	case *assayv1.ParamValue_BoolValue:
		return k.BoolValue
	}
	return nil
}

// ListStrategies returns every strategy the server offers.
func (c *Client) ListStrategies(ctx context.Context) ([]StrategyInfo, error) {
	cctx, cancel := c.callCtx(ctx, 0)
	defer cancel()
	resp, err := c.stub.ListStrategies(cctx, &assayv1.ListStrategiesRequest{})
	if err != nil {
		return nil, wrap(err)
	}
	out := make([]StrategyInfo, 0, len(resp.Strategies))
	for _, s := range resp.Strategies {
		info := StrategyInfo{Name: s.Name, Kind: s.Kind, Description: s.Description,
			RequiredInputs: s.RequiredInputs, OptionalInputs: s.OptionalInputs}
		for _, p := range s.Params {
			info.Params = append(info.Params, ParamInfo{Name: p.Name, Type: p.Type.String(),
				Description: p.Description, Default: paramValue(p.DefaultValue),
				Minimum: p.Minimum, Maximum: p.Maximum, Choices: p.Choices})
		}
		out = append(out, info)
	}
	return out, nil
}

// Pool is a pool's metadata.
type Pool struct {
	PoolID       string
	ItemCount    int64
	LabeledCount int64
	Version      int64
	Arrays       []ArrayInfo
	SizeBytes    int64
}

// ArrayInfo is the dtype and full shape of one stored pool array.
type ArrayInfo struct {
	Name  string
	DType DType
	Shape []int64
}

func pool(p *assayv1.Pool) Pool {
	out := Pool{PoolID: p.PoolId, ItemCount: p.ItemCount, LabeledCount: p.LabeledCount,
		Version: p.Version, SizeBytes: p.SizeBytes}
	for _, a := range p.Arrays {
		out.Arrays = append(out.Arrays, ArrayInfo{a.Name, DType(a.Dtype), a.Shape})
	}
	return out
}

// CreatePool creates an empty pool.
func (c *Client) CreatePool(ctx context.Context, poolID string) (Pool, error) {
	cctx, cancel := c.callCtx(ctx, 0)
	defer cancel()
	r, err := c.stub.CreatePool(cctx, &assayv1.CreatePoolRequest{PoolId: poolID})
	if err != nil {
		return Pool{}, wrap(err)
	}
	return pool(r.Pool), nil
}

// GetPool returns a pool's metadata.
func (c *Client) GetPool(ctx context.Context, poolID string) (Pool, error) {
	cctx, cancel := c.callCtx(ctx, 0)
	defer cancel()
	r, err := c.stub.GetPool(cctx, &assayv1.GetPoolRequest{PoolId: poolID})
	if err != nil {
		return Pool{}, wrap(err)
	}
	return pool(r.Pool), nil
}

// ListPools returns every pool, following pagination.
func (c *Client) ListPools(ctx context.Context, pageSize int32) ([]Pool, error) {
	var out []Pool
	token := ""
	for {
		cctx, cancel := c.callCtx(ctx, 0)
		r, err := c.stub.ListPools(cctx, &assayv1.ListPoolsRequest{PageSize: pageSize, PageToken: token})
		cancel()
		if err != nil {
			return nil, wrap(err)
		}
		for _, p := range r.Pools {
			out = append(out, pool(p))
		}
		if token = r.NextPageToken; token == "" {
			return out, nil
		}
	}
}

// DeletePool deletes a pool and its arrays.
func (c *Client) DeletePool(ctx context.Context, poolID string) error {
	cctx, cancel := c.callCtx(ctx, 0)
	defer cancel()
	_, err := c.stub.DeletePool(cctx, &assayv1.DeletePoolRequest{PoolId: poolID})
	return wrap(err)
}

// NamedTensor is one array of an append or a replace, by role.
type NamedTensor struct {
	Name   string
	Tensor Tensor
}

// AppendResult is what AppendPoolItems answers.
type AppendResult struct {
	Pool          Pool
	FirstIndex    int64
	AppendedCount int64
}

// Append streams arrays into a pool in chunks of chunkBytes (4 MiB when 0). Nothing
// is stored unless the whole stream arrives. requestID may be empty.
func (c *Client) Append(ctx context.Context, poolID string, arrays []NamedTensor,
	chunkBytes int, requestID string) (AppendResult, error) {
	cctx, cancel := c.callCtx(ctx, 0)
	defer cancel()
	stream, err := c.stub.AppendPoolItems(cctx)
	if err != nil {
		return AppendResult{}, wrap(err)
	}
	err = upload(poolID, arrays, chunkBytes, requestID, func(h *assayv1.AppendHeader, k *assayv1.AppendChunk) error {
		m := &assayv1.AppendPoolItemsRequest{Part: &assayv1.AppendPoolItemsRequest_Chunk{Chunk: k}}
		if h != nil {
			m = &assayv1.AppendPoolItemsRequest{Part: &assayv1.AppendPoolItemsRequest_Header{Header: h}}
		}
		return sendOrStatus(stream.Send(m), func() error { _, err := stream.CloseAndRecv(); return err })
	})
	if err != nil {
		return AppendResult{}, wrap(err)
	}
	r, err := stream.CloseAndRecv()
	if err != nil {
		return AppendResult{}, wrap(err)
	}
	return AppendResult{pool(r.Pool), r.FirstIndex, r.AppendedCount}, nil
}

// Replace replaces the named arrays of a pool for all its N items (a round of the
// active-learning loop: the retrained model's probs, samples or embeddings), streamed
// in chunks like Append. Every array must cover exactly the pool's N items; labels,
// raw model_inputs and recorded epochs are kept, and nothing changes unless the whole
// stream arrives. Returns the pool at its new version (Selection.PoolVersion of later
// Selects). requestID may be empty.
func (c *Client) Replace(ctx context.Context, poolID string, arrays []NamedTensor,
	chunkBytes int, requestID string) (Pool, error) {
	cctx, cancel := c.callCtx(ctx, 0)
	defer cancel()
	stream, err := c.stub.ReplacePoolArrays(cctx)
	if err != nil {
		return Pool{}, wrap(err)
	}
	err = upload(poolID, arrays, chunkBytes, requestID, func(h *assayv1.AppendHeader, k *assayv1.AppendChunk) error {
		m := &assayv1.ReplacePoolArraysRequest{Part: &assayv1.ReplacePoolArraysRequest_Chunk{Chunk: k}}
		if h != nil {
			m = &assayv1.ReplacePoolArraysRequest{Part: &assayv1.ReplacePoolArraysRequest_Header{Header: h}}
		}
		return sendOrStatus(stream.Send(m), func() error { _, err := stream.CloseAndRecv(); return err })
	})
	if err != nil {
		return Pool{}, wrap(err)
	}
	r, err := stream.CloseAndRecv()
	if err != nil {
		return Pool{}, wrap(err)
	}
	return pool(r.Pool), nil
}

// sendOrStatus returns a Send's error; when the server ended the stream (io.EOF), the
// call's status, which says why.
func sendOrStatus(err error, status func() error) error {
	if errors.Is(err, io.EOF) {
		return status()
	}
	return err
}

// upload sends the header (h set, k nil), then every array in chunks of chunkBytes (4 MiB
// when 0) through send: the stream of an append or a replace.
func upload(poolID string, arrays []NamedTensor, chunkBytes int, requestID string,
	send func(h *assayv1.AppendHeader, k *assayv1.AppendChunk) error) error {
	if chunkBytes <= 0 {
		chunkBytes = 4 << 20
	}
	if requestID == "" {
		requestID = NewRequestID()
	}
	header := &assayv1.AppendHeader{PoolId: poolID, RequestId: requestID}
	for _, a := range arrays {
		header.Arrays = append(header.Arrays, &assayv1.ArrayHeader{Name: a.Name,
			Dtype: assayv1.DataType(a.Tensor.DType), Shape: a.Tensor.Shape})
	}
	if err := send(header, nil); err != nil {
		return err
	}
	for i, a := range arrays {
		data := a.Tensor.Data
		for off := 0; off < len(data); off += chunkBytes {
			end := off + chunkBytes
			if end > len(data) {
				end = len(data)
			}
			chunk := &assayv1.AppendChunk{ArrayIndex: int32(i), Offset: int64(off), Data: data[off:end]}
			if err := send(nil, chunk); err != nil {
				return err
			}
		}
	}
	return nil
}

// Label marks pool items labeled with their class labels. requestID may be empty.
func (c *Client) Label(ctx context.Context, poolID string, indices, labels []int64,
	requestID string) (Pool, error) {
	if requestID == "" {
		requestID = NewRequestID()
	}
	cctx, cancel := c.callCtx(ctx, 0)
	defer cancel()
	r, err := c.stub.LabelPoolItems(cctx, &assayv1.LabelPoolItemsRequest{PoolId: poolID,
		Indices: indices, Labels: labels, RequestId: requestID})
	if err != nil {
		return Pool{}, wrap(err)
	}
	return pool(r.Pool), nil
}

// Conn is the underlying connection (for tools that send pre-encoded messages).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// CallContext applies the client's deadline and bearer token to ctx.
func (c *Client) CallContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	return c.callCtx(ctx, timeout)
}
