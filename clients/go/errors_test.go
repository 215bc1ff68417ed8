package assay

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The error type's own tests: decoding a status built here, then a live server's.

func TestErrorReadsReasonFieldAndRetryDelay(t *testing.T) {
	s, err := status.New(codes.ResourceExhausted, "busy").WithDetails(
		&errdetails.ErrorInfo{Reason: "OTHER", Domain: "example.com"},
		&errdetails.ErrorInfo{Reason: "TOO_MANY_REQUESTS", Domain: "assay.v1",
			Metadata: map[string]string{"field": "pool_id"}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1250 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	var e *Error
	if !errors.As(wrap(s.Err()), &e) {
		t.Fatalf("wrap gave no *Error")
	}
	if e.Code != codes.ResourceExhausted || e.Reason != "TOO_MANY_REQUESTS" ||
		e.Field != "pool_id" || e.RetryDelay != 1250*time.Millisecond {
		t.Fatalf("got %+v", e)
	}
	if !strings.Contains(e.Error(), "RESOURCE_EXHAUSTED TOO_MANY_REQUESTS: busy") {
		t.Fatalf("message %q", e.Error())
	}
	if status.Code(e) != codes.ResourceExhausted {
		t.Fatalf("status.Code sees %v", status.Code(e))
	}
}

func TestErrorWithoutDetailsHasNoReason(t *testing.T) {
	var e *Error
	if !errors.As(wrap(status.Error(codes.Unavailable, "down")), &e) {
		t.Fatalf("wrap gave no *Error")
	}
	if e.Reason != "" || e.Field != "" || e.RetryDelay != 0 {
		t.Fatalf("got %+v", e)
	}
}

func TestServerErrorCarriesReasonAndField(t *testing.T) {
	c, _ := testClient(t)
	_, err := c.GetPool(context.Background(), "no-such-pool-go")
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %v", err)
	}
	if e.Code != codes.NotFound || e.Reason != "POOL_NOT_FOUND" || e.Field != "pool_id" ||
		e.RetryDelay != 0 {
		t.Fatalf("got %+v", e)
	}
}
