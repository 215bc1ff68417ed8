package dev.assay.client;

import java.util.List;

/**
 * One strategy the server offers.
 *
 * @param name the name to pass to {@link SelectRequest}
 * @param kind "score" (per-item score, top-b) or "batch" (the batch is built jointly)
 * @param description one line with its reference
 * @param requiredInputs input roles that must be present
 * @param optionalInputs input roles used when present
 * @param params its parameters
 */
public record StrategyInfo(
    String name,
    String kind,
    String description,
    List<String> requiredInputs,
    List<String> optionalInputs,
    List<Param> params) {

  /**
   * Declaration of one strategy parameter.
   *
   * @param name the key in {@link SelectRequest#param}
   * @param type "DOUBLE", "INT", "STRING" or "BOOL"
   * @param description what it does
   * @param defaultValue Double, Long, String or Boolean; null when there is none
   * @param minimum inclusive lower bound; null when none
   * @param maximum inclusive upper bound; null when none
   * @param choices allowed strings (empty: any)
   */
  public record Param(
      String name,
      String type,
      String description,
      Object defaultValue,
      Double minimum,
      Double maximum,
      List<String> choices) {}

  static StrategyInfo of(dev.assay.v1.StrategyInfo s) {
    List<Param> params =
        s.getParamsList().stream()
            .map(p -> new Param(p.getName(), p.getType().name().replace("PARAM_TYPE_", ""),
                p.getDescription(), p.hasDefaultValue() ? value(p.getDefaultValue()) : null,
                p.hasMinimum() ? p.getMinimum() : null, p.hasMaximum() ? p.getMaximum() : null,
                List.copyOf(p.getChoicesList())))
            .toList();
    return new StrategyInfo(s.getName(), s.getKind(), s.getDescription(),
        List.copyOf(s.getRequiredInputsList()), List.copyOf(s.getOptionalInputsList()), params);
  }

  static Object value(dev.assay.v1.ParamValue v) {
    return switch (v.getKindCase()) {
      case DOUBLE_VALUE -> v.getDoubleValue();
      case INT_VALUE -> v.getIntValue();
      case STRING_VALUE -> v.getStringValue();
      case BOOL_VALUE -> v.getBoolValue();
      case KIND_NOT_SET -> null;
    };
  }
}
