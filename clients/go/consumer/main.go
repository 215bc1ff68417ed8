// A project of its own that uses the Go client as a module: one Select over inline
// probabilities. Usage: ASSAY_TARGET=127.0.0.1:50051 go run .
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	assay "github.com/assay-dev/assay/clients/go"
)

func main() {
	target := os.Getenv("ASSAY_TARGET")
	if target == "" {
		target = "127.0.0.1:50051"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := assay.Dial(ctx, target, assay.Options{Token: os.Getenv("ASSAY_TOKEN")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer c.Close()
	// Four items, three classes, row-major [N, C]: the two most uncertain are items 1 and 2.
	probs, err := assay.F32([]float32{
		0.98, 0.01, 0.01,
		0.34, 0.33, 0.33,
		0.60, 0.30, 0.10,
		0.50, 0.50, 0.00,
	}, 4, 3)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sel, err := c.Select(ctx, assay.SelectRequest{Strategy: "entropy", Budget: 2,
		Inputs: map[string]assay.Tensor{"probs": probs}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err) // *assay.Error: code, reason, field
		os.Exit(1)
	}
	fmt.Println("consumer: selected", sel.Indices)
}
