module assay

go 1.19

require (
	github.com/golang/protobuf v1.5.2
	golang.org/x/net v0.7.0
	golang.org/x/sys v0.3.0
	golang.org/x/text v0.7.0
	google.golang.org/genproto v0.0.0-00010101000000-000000000000
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
