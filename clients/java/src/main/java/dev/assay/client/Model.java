package dev.assay.client;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A registered ONNX model.
 *
 * @param modelId the model id
 * @param outputs declared outputs: role ("logits", "probs", "embeddings", "loss",
 *     "discriminator") to graph output name, in registration order
 * @param inputs every graph input, in the graph's order, with the array that feeds it
 * @param sizeBytes size of the ONNX file
 * @param sha256 lower-case hex SHA-256 of the file
 * @param opsetVersion opset of the default ONNX domain
 * @param dropoutCount number of Dropout nodes (MC dropout needs at least one)
 */
public record Model(
    String modelId,
    Map<String, String> outputs,
    List<Input> inputs,
    long sizeBytes,
    String sha256,
    long opsetVersion,
    int dropoutCount) {

  /**
   * A graph input of a model and the array it is fed from.
   *
   * @param name graph input name
   * @param dtype element type the model expects
   * @param shape declared shape, -1 for a dynamic axis (axis 0 is the item axis)
   * @param array the pool array (or inline input) that feeds it: "model_inputs" or
   *     "model_inputs.&lt;name&gt;"
   */
  public record Input(String name, DType dtype, long[] shape, String array) {}

  static Model of(dev.assay.v1.Model m) {
    Map<String, String> outputs = new LinkedHashMap<>();
    for (dev.assay.v1.OutputBinding o : m.getOutputsList()) {
      outputs.put(o.getRole(), o.getOutputName());
    }
    List<Input> inputs =
        m.getInputsList().stream()
            .map(i -> new Input(i.getName(), DType.of(i.getDtype()),
                i.getShapeList().stream().mapToLong(Long::longValue).toArray(), i.getArray()))
            .toList();
    return new Model(m.getModelId(), java.util.Collections.unmodifiableMap(outputs), inputs,
        m.getSizeBytes(), m.getSha256(), m.getOpsetVersion(), m.getDropoutCount());
  }
}
