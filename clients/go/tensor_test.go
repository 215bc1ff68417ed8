package assay

import (
	"bytes"
	"math"
	"testing"
)

func TestF32LittleEndianRowMajor(t *testing.T) {
	tensor, err := F32([]float32{1, -2.5, 0, 3, 4, 5}, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if tensor.DType != FP32 || len(tensor.Shape) != 2 || tensor.Shape[0] != 2 || tensor.Shape[1] != 3 {
		t.Fatalf("dtype/shape: %v %v", tensor.DType, tensor.Shape)
	}
	if !bytes.Equal(tensor.Data[:4], []byte{0, 0, 0x80, 0x3f}) || len(tensor.Data) != 24 {
		t.Fatalf("float32 1.0 must be 00 00 80 3f, got % x", tensor.Data[:4])
	}
	i, _ := I64([]int64{1, -1}, 2)
	if i.Data[0] != 1 || i.Data[7] != 0 || i.Data[8] != 0xff {
		t.Fatalf("int64 bytes % x", i.Data)
	}
}

func TestShapeMustMatch(t *testing.T) {
	if _, err := F32(make([]float32, 6), 4, 2); err == nil {
		t.Fatal("a 6-element slice was accepted as [4, 2]")
	}
	if _, err := F64(make([]float64, 6), -2, -3); err == nil {
		t.Fatal("a negative dimension was accepted")
	}
}

func TestHalfConversions(t *testing.T) {
	cases := map[float32]uint16{1: 0x3c00, -2: 0xc000, 65504: 0x7bff, 65520: 0x7c00,
		5.960464477539063e-08: 0x0001, 0: 0, 1 + 1.0/2048: 0x3c00, 1 + 3.0/2048: 0x3c02}
	for v, want := range cases {
		if got := Float32ToF16(v); got != want {
			t.Errorf("Float32ToF16(%g) = %#04x, want %#04x", v, got, want)
		}
	}
	if Float32ToF16(float32(math.NaN()))&0x7c00 != 0x7c00 {
		t.Error("NaN")
	}
	for h := uint16(0); h < 0x7c00; h++ {
		if Float32ToF16(F16ToFloat32(h)) != h {
			t.Fatalf("round trip of %#04x", h)
		}
	}
	if Float32ToBF16(1) != 0x3f80 || Float32ToBF16(-3) != 0xc040 {
		t.Error("bfloat16")
	}
}
