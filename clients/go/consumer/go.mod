module example.com/assay-consumer

go 1.19

require github.com/assay-dev/assay/clients/go v0.0.0-00010101000000-000000000000

// What `go mod tidy` lists for a go 1.17+ module: the client's own requirements.
require (
	github.com/golang/protobuf v1.5.2 // indirect
	golang.org/x/net v0.7.0 // indirect
	golang.org/x/sys v0.3.0 // indirect
	golang.org/x/text v0.7.0 // indirect
	google.golang.org/genproto v0.0.0-20200413115906-b5235f65be36 // indirect
	google.golang.org/grpc v1.33.3 // indirect
	google.golang.org/protobuf v1.28.1 // indirect
)

// The local checkout. A project outside this repository leaves this out and requires a
// released version: go get github.com/assay-dev/assay/clients/go@latest
replace github.com/assay-dev/assay/clients/go => ../
