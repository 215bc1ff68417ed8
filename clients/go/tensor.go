package assay

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	assayv1 "github.com/assay-dev/assay/clients/go/gen/assayv1"
)

// DType is the element type of a Tensor; values equal the wire enum assay.v1.DataType.
type DType int32

// Element types (KServe v2 names).
const (
	FP32  DType = DType(assayv1.DataType_DATA_TYPE_FP32)
	FP16  DType = DType(assayv1.DataType_DATA_TYPE_FP16)
	FP64  DType = DType(assayv1.DataType_DATA_TYPE_FP64)
	INT32 DType = DType(assayv1.DataType_DATA_TYPE_INT32)
	INT64 DType = DType(assayv1.DataType_DATA_TYPE_INT64)
	BF16  DType = DType(assayv1.DataType_DATA_TYPE_BF16)
)

// Itemsize is the number of bytes of one element.
func (d DType) Itemsize() int {
	switch d {
	case FP16, BF16:
		return 2
	case FP32, INT32:
		return 4
	case FP64, INT64:
		return 8
	}
	return 0
}

// Tensor is a dense row-major array as it travels: little-endian bytes, a dtype and a shape.
type Tensor struct {
	DType DType
	Shape []int64
	// Data is little-endian, row-major, len(Data) == prod(Shape) * DType.Itemsize().
	Data []byte
}

var littleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

func checkShape(n int, shape []int64) error {
	prod := int64(1)
	for _, d := range shape {
		if d < 0 {
			return fmt.Errorf("assay: tensor shape %v has a negative dimension", shape)
		}
		prod *= d
	}
	if prod != int64(n) {
		return fmt.Errorf("assay: tensor shape %v holds %d elements but the slice has %d",
			shape, prod, n)
	}
	return nil
}

// view returns the bytes of a slice without copying on little-endian hosts, and a
// little-endian copy elsewhere.
func view[T float32 | float64 | int32 | int64 | uint16](v []T, put func([]byte, T)) []byte {
	var zero T
	size := int(unsafe.Sizeof(zero))
	if len(v) == 0 {
		return []byte{}
	}
	if littleEndian {
		return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), len(v)*size)
	}
	out := make([]byte, len(v)*size)
	for i, x := range v {
		put(out[i*size:], x)
	}
	return out
}

// F32 wraps float32 values of the given shape (no copy on little-endian hosts).
func F32(v []float32, shape ...int64) (Tensor, error) {
	if err := checkShape(len(v), shape); err != nil {
		return Tensor{}, err
	}
	return Tensor{FP32, shape, view(v, func(b []byte, x float32) {
		binary.LittleEndian.PutUint32(b, math.Float32bits(x))
	})}, nil
}

// F64 wraps float64 values of the given shape.
func F64(v []float64, shape ...int64) (Tensor, error) {
	if err := checkShape(len(v), shape); err != nil {
		return Tensor{}, err
	}
	return Tensor{FP64, shape, view(v, func(b []byte, x float64) {
		binary.LittleEndian.PutUint64(b, math.Float64bits(x))
	})}, nil
}

// I32 wraps int32 values (class labels) of the given shape.
func I32(v []int32, shape ...int64) (Tensor, error) {
	if err := checkShape(len(v), shape); err != nil {
		return Tensor{}, err
	}
	return Tensor{INT32, shape, view(v, func(b []byte, x int32) {
		binary.LittleEndian.PutUint32(b, uint32(x))
	})}, nil
}

// I64 wraps int64 values (class labels) of the given shape.
func I64(v []int64, shape ...int64) (Tensor, error) {
	if err := checkShape(len(v), shape); err != nil {
		return Tensor{}, err
	}
	return Tensor{INT64, shape, view(v, func(b []byte, x int64) {
		binary.LittleEndian.PutUint64(b, uint64(x))
	})}, nil
}

func bits16(d DType, v []uint16, shape []int64) (Tensor, error) {
	if err := checkShape(len(v), shape); err != nil {
		return Tensor{}, err
	}
	return Tensor{d, shape, view(v, func(b []byte, x uint16) {
		binary.LittleEndian.PutUint16(b, x)
	})}, nil
}

// F16Bits wraps IEEE binary16 bit patterns (see Float32ToF16).
func F16Bits(v []uint16, shape ...int64) (Tensor, error) { return bits16(FP16, v, shape) }

// BF16Bits wraps bfloat16 bit patterns (see Float32ToBF16).
func BF16Bits(v []uint16, shape ...int64) (Tensor, error) { return bits16(BF16, v, shape) }

// Float32ToF16 returns the binary16 bits of v, rounded to nearest even.
func Float32ToF16(v float32) uint16 {
	x := math.Float32bits(v)
	sign := uint16(x>>16) & 0x8000
	abs := x & 0x7fffffff
	switch {
	case abs > 0x7f800000:
		return sign | 0x7e00
	case abs >= 0x477ff000:
		return sign | 0x7c00
	case abs < 0x38800000:
		return sign | uint16(math.RoundToEven(float64(math.Float32frombits(abs))*(1<<24)))
	}
	m := abs + 0xc8000000
	m += 0x0fff + (m>>13)&1
	return sign | uint16(m>>13)
}

// F16ToFloat32 widens binary16 bits to a float32.
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch exp {
	case 0:
		f := float32(man) / (1 << 24)
		if sign != 0 {
			return -f
		}
		return f
	case 31:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	}
	return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
}

// Float32ToBF16 returns the bfloat16 bits of v, rounded to nearest even.
func Float32ToBF16(v float32) uint16 {
	x := math.Float32bits(v)
	if x&0x7fffffff > 0x7f800000 {
		return uint16(x>>16) | 0x40
	}
	x += 0x7fff + (x>>16)&1
	return uint16(x >> 16)
}

func (t Tensor) proto() *assayv1.Tensor {
	return &assayv1.Tensor{Dtype: assayv1.DataType(t.DType), Shape: t.Shape, Data: t.Data}
}
