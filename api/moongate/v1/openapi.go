package moongatev1

import _ "embed"

// OpenAPI is the OpenAPI 2 (Swagger) description of the REST API, as
// generated from the .proto files. The server serves it at /v1/openapi.json.
//
//go:embed moongate.swagger.json
var OpenAPI []byte
