package assay

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	assayv1 "github.com/assay-dev/assay/clients/go/gen/assayv1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Retries come from the contract's service config, with one deadline per call: an
// in-process server counts the attempts (tests/clients/test_service_config.py has the
// same tests for the Python client).

// TestMain runs the tests with GRPC_GO_RETRY=on: grpc-go before 1.40 reads it once, when
// the process starts, and retries nothing without it.
func TestMain(m *testing.M) {
	if os.Getenv("GRPC_GO_RETRY") == "" {
		os.Setenv("GRPC_GO_RETRY", "on")
		if exe, err := os.Executable(); err == nil {
			if err := syscall.Exec(exe, os.Args, os.Environ()); err != nil {
				panic(err)
			}
		}
	}
	os.Exit(m.Run())
}

// flaky answers UNAVAILABLE to the first failures attempts (each after delay), then OK.
type flaky struct {
	assayv1.UnimplementedAssayServiceServer
	failures int
	delay    time.Duration
	mu       sync.Mutex
	attempts int
	ids      map[string]bool
}

func (f *flaky) attempt() error {
	f.mu.Lock()
	f.attempts++
	n := f.attempts
	f.mu.Unlock()
	time.Sleep(f.delay)
	if n <= f.failures {
		return status.Errorf(codes.Unavailable, "attempt %d: restarting", n)
	}
	return nil
}

func (f *flaky) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts
}

func (f *flaky) Select(_ context.Context, r *assayv1.SelectRequest) (*assayv1.SelectResponse, error) {
	f.mu.Lock()
	f.ids[r.RequestId] = true
	f.mu.Unlock()
	if err := f.attempt(); err != nil {
		return nil, err
	}
	return &assayv1.SelectResponse{Indices: []int64{1}, Scores: []float64{0.5},
		Strategy: r.Strategy, RequestId: r.RequestId}, nil
}

func (f *flaky) CreatePool(_ context.Context, r *assayv1.CreatePoolRequest) (*assayv1.CreatePoolResponse, error) {
	if err := f.attempt(); err != nil {
		return nil, err
	}
	return &assayv1.CreatePoolResponse{Pool: &assayv1.Pool{PoolId: r.PoolId}}, nil
}

func startFlaky(t *testing.T, failures int, delay time.Duration, opts Options) (*flaky, *Client) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &flaky{failures: failures, delay: delay, ids: map[string]bool{}}
	server := grpc.NewServer()
	assayv1.RegisterAssayServiceServer(server, f)
	go server.Serve(lis)
	t.Cleanup(server.Stop)
	c, err := Dial(context.Background(), lis.Addr().String(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

func flakySelect(c *Client) (*Selection, error) {
	probs, err := F32([]float32{0.5, 0.5, 0.5, 0.5}, 2, 2)
	if err != nil {
		return nil, err
	}
	return c.Select(context.Background(), SelectRequest{Strategy: "entropy", Budget: 1,
		Inputs: map[string]Tensor{"probs": probs}})
}

func TestUnavailableTwiceIsRetriedByTheServiceConfig(t *testing.T) {
	f, c := startFlaky(t, 2, 0, Options{Timeout: 30 * time.Second})
	sel, err := flakySelect(c)
	if err != nil {
		t.Fatalf("select: %v", err)
	}
	if f.count() != 3 || len(sel.Indices) != 1 || sel.Indices[0] != 1 {
		t.Fatalf("attempts %d, indices %v: want 3 attempts and [1]", f.count(), sel.Indices)
	}
	if len(f.ids) != 1 {
		t.Fatalf("the attempts sent %d request ids, want 1", len(f.ids))
	}
}

func TestOneDeadlineCoversEveryAttempt(t *testing.T) {
	// Each attempt takes 0.4 s on the server: a 4th could start at 1.2 s at the earliest,
	// after the one 1 s deadline, so the call ends DEADLINE_EXCEEDED within 3 attempts.
	f, c := startFlaky(t, 10, 400*time.Millisecond, Options{Timeout: time.Second})
	_, err := flakySelect(c)
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.DeadlineExceeded {
		t.Fatalf("err %v: want DEADLINE_EXCEEDED", err)
	}
	if n := f.count(); n < 1 || n > 3 {
		t.Fatalf("%d attempts within one 1 s deadline, want 1 to 3", n)
	}
}

func TestUnsafeMethodsAndDisabledRetriesAreSentOnce(t *testing.T) {
	f, c := startFlaky(t, 1, 0, Options{Timeout: 30 * time.Second})
	_, err := c.CreatePool(context.Background(), "p")
	if status.Code(err) != codes.Unavailable || f.count() != 1 {
		t.Fatalf("CreatePool: %v after %d attempts, want UNAVAILABLE after 1", err, f.count())
	}
	f, c = startFlaky(t, 1, 0, Options{Timeout: 30 * time.Second, Retries: -1})
	if _, err := flakySelect(c); status.Code(err) != codes.Unavailable || f.count() != 1 {
		t.Fatalf("Select, Retries -1: %v after %d attempts, want UNAVAILABLE after 1", err, f.count())
	}
}
