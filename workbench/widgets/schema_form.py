"""Forms generated from JSON schemas (pydantic configs): one source of truth for types, defaults,
ranges and help text.

:func:`parse_schema` turns a schema into :class:`FieldSpec` s; :class:`SchemaForm` builds one editor
per field, with the description as tooltip, the default as placeholder, essential fields first and the
ones marked ``advanced: true`` in a collapsible section. Values are checked as they are typed (type,
range, choices); a bad value is flagged inline under the field. Checks that need several fields (or the
data) stay in ``core``: the page validates the whole config with ``core`` and hands the errors back
with :meth:`SchemaForm.set_external_errors`, which flags the fields they name.

Supported shapes: booleans, integers and numbers (with ``minimum``/``maximum``/exclusive bounds), strings,
enums (``enum`` or ``Literal``), fixed-length tuples (``prefixItems``: typed as ``32, 32, 32``), mappings
and lists (typed as YAML, e.g. ``{weight_decay: 1e-5}``), nested objects (``$ref``, shown as a group),
and ``X | None`` of each (empty means None).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.config import fields_named_in  # the fields a message names, for errors that carry no path

__all__ = ["FieldSpec", "parse_schema", "SchemaForm", "FieldEditor", "NO_DEFAULT", "fields_named_in"]


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass
class FieldSpec:
    """One form field as read from the schema."""

    key: str
    title: str
    description: str = ""
    kind: str = "str"  # bool | int | float | str | enum | tuple | mapping | list | object | any
    nullable: bool = False
    default: Any = NO_DEFAULT
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    choices: list[Any] = field(default_factory=list)
    item_kind: str = "float"  # tuple items
    length: int | None = None  # tuple length
    advanced: bool = False
    nested: list[FieldSpec] = field(default_factory=list)

    def range_text(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f"\u2265 {_fmt(self.minimum)}")
        if self.exclusive_minimum is not None:
            parts.append(f"> {_fmt(self.exclusive_minimum)}")
        if self.maximum is not None:
            parts.append(f"\u2264 {_fmt(self.maximum)}")
        if self.exclusive_maximum is not None:
            parts.append(f"< {_fmt(self.exclusive_maximum)}")
        return " and ".join(parts)

    def tooltip(self) -> str:
        lines = [f"<b>{self.title}</b> <code>{self.key}</code>"]
        if self.description:
            lines.append(self.description)
        facts = []
        if self.range_text():
            facts.append(f"Allowed: {self.range_text()}")
        if self.choices:
            facts.append("Choices: " + ", ".join(str(c) for c in self.choices))
        if self.default is not NO_DEFAULT:
            facts.append(f"Default: {_display(self.default)}")
        if self.nullable:
            facts.append("Leave empty for none/automatic.")
        if self.kind in ("mapping", "list"):
            facts.append("Type YAML, e.g. {key: value} or [a, b].")
        if self.kind == "tuple":
            facts.append(f"Type {self.length or 'several'} values separated by commas.")
        if facts:
            lines.append("<br>".join(facts))
        return "<br>".join(lines)


def _fmt(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _display(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True).strip() if value else ("{}" if isinstance(value, dict) else "[]")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _fmt(value) if isinstance(value, (int, float)) else str(value)


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """Inline ``$ref`` / single ``allOf`` nodes (keeping the sibling keys such as description)."""
    node = dict(node)
    while True:
        if "$ref" in node:
            name = str(node.pop("$ref")).rsplit("/", 1)[-1]
            target = dict(defs.get(name, {}))
            target.update(node)  # the field's own title, description and default win over the definition's
            node = target
            continue
        if "allOf" in node and len(node["allOf"]) == 1:
            inner = node.pop("allOf")[0]
            merged = dict(inner)
            merged.update(node)
            node = merged
            continue
        return node


def _kind_of(node: Mapping[str, Any]) -> str:
    if "enum" in node or "const" in node:
        return "enum"
    t = node.get("type")
    if t == "boolean":
        return "bool"
    if t == "integer":
        return "int"
    if t == "number":
        return "float"
    if t == "string":
        return "str"
    if t == "array":
        return "tuple" if "prefixItems" in node else "list"
    if t == "object":
        return "object" if "properties" in node else "mapping"
    return "any"


def _spec_from_node(key: str, node: Mapping[str, Any], defs: Mapping[str, Any], required: bool) -> FieldSpec:
    node = _resolve(node, defs)
    nullable = False
    variants = node.get("anyOf") or node.get("oneOf")
    base = node
    if variants:
        non_null = [_resolve(v, defs) for v in variants if v.get("type") != "null"]
        nullable = len(non_null) < len(variants)
        if len(non_null) == 1:
            base = {**non_null[0], **{k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}}
        elif non_null and all("enum" in v or "const" in v for v in non_null):
            base = {"enum": [c for v in non_null for c in v.get("enum", [v.get("const")])], **node}
        else:
            base = {**node, "type": None}
    kind = _kind_of(base)
    spec = FieldSpec(
        key=key,
        title=str(node.get("title") or key.replace("_", " ").capitalize()),
        description=str(node.get("description") or base.get("description") or ""),
        kind=kind,
        nullable=nullable,
        default=node.get("default", NO_DEFAULT),
        required=required,
        minimum=base.get("minimum"),
        maximum=base.get("maximum"),
        exclusive_minimum=base.get("exclusiveMinimum"),
        exclusive_maximum=base.get("exclusiveMaximum"),
        advanced=bool(node.get("advanced") or base.get("advanced")),
    )
    if kind == "enum":
        spec.choices = list(base.get("enum") or [base.get("const")])
    if kind == "tuple":
        items = [_resolve(i, defs) for i in base.get("prefixItems", [])]
        spec.length = len(items)
        spec.item_kind = "int" if items and all(i.get("type") == "integer" for i in items) else "float"
        if items:
            spec.minimum = items[0].get("minimum", spec.minimum)
            spec.exclusive_minimum = items[0].get("exclusiveMinimum", spec.exclusive_minimum)
    if kind == "object":
        spec.nested = _specs(base, defs)
        if spec.default is NO_DEFAULT:
            spec.default = {s.key: s.default for s in spec.nested if s.default is not NO_DEFAULT}
    return spec


def _specs(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[FieldSpec]:
    required = set(schema.get("required", []))
    return [_spec_from_node(k, v, defs, k in required) for k, v in schema.get("properties", {}).items()]


def parse_schema(
    schema: Mapping[str, Any], exclude: Iterable[str] = (), defaults: Mapping[str, Any] | None = None
) -> list[FieldSpec]:
    """The fields of a JSON schema (``$defs`` resolved), in declaration order, minus ``exclude``.

    ``defaults`` supplies the defaults a schema cannot state (pydantic's ``default_factory`` fields),
    e.g. ``config_to_dict(TrainerConfig())``; fields whose schema has a default keep it.
    """
    skip = set(exclude)
    defs = schema.get("$defs", {})
    specs = [s for s in _specs(schema, defs) if s.key not in skip]
    for spec in specs:
        if spec.default is NO_DEFAULT and defaults is not None and spec.key in defaults:
            spec.default = defaults[spec.key]
        if spec.default is NO_DEFAULT and not spec.required and spec.kind in ("mapping", "list"):
            spec.default = {} if spec.kind == "mapping" else []
    return specs


# ---------------------------------------------------------------------------------------------- editors


class FieldEditor(QWidget):
    """An editor for one field: the input widget plus an inline error line under it."""

    changed = Signal()

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.spec = spec
        self._external_error = ""
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        self.input = self._make_input()
        self.input.setToolTip(spec.tooltip())
        self.input.setObjectName(f"field_{spec.key}")
        layout.addWidget(self.input)
        self.error_label = QLabel()
        self.error_label.setObjectName("FieldError")
        self.error_label.setWordWrap(True)
        self.error_label.setVisible(False)
        layout.addWidget(self.error_label)
        default = spec.default if spec.default is not NO_DEFAULT else None
        self.set_value(default)

    # -- construction ----------------------------------------------------------------------------------
    def _make_input(self) -> QWidget:
        spec = self.spec
        if spec.kind == "bool":
            box = QCheckBox()
            box.toggled.connect(self._edited)
            return box
        if spec.kind == "enum":
            combo = QComboBox()
            if spec.nullable:
                combo.addItem("(none)", None)
            for choice in spec.choices:
                combo.addItem(str(choice), choice)
            combo.currentIndexChanged.connect(self._edited)
            return combo
        if spec.kind == "object":
            self.subform = SchemaForm.from_specs(spec.nested, collapsible=False)
            self.subform.changed.connect(self._edited)
            return self.subform
        edit = QLineEdit()
        edit.setClearButtonEnabled(spec.nullable)
        if spec.default is not NO_DEFAULT:
            edit.setPlaceholderText("none" if spec.default is None else f"default: {_display(spec.default)}")
        edit.textEdited.connect(self._edited)
        edit.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        return edit

    @Slot()
    def _edited(self) -> None:
        self._external_error = ""
        self.refresh_error()
        self.changed.emit()

    # -- values ---------------------------------------------------------------------------------------
    def set_value(self, value: Any) -> None:
        spec = self.spec
        blocker = [self.input.blockSignals(True)]
        try:
            if spec.kind == "bool":
                self.input.setChecked(bool(value))
            elif spec.kind == "enum":
                index = self.input.findData(value) if value is not None or spec.nullable else 0
                if index < 0 and value is not None:
                    index = self.input.findText(str(value))
                self.input.setCurrentIndex(max(0, index))
            elif spec.kind == "object":
                self.subform.set_values(value or {})
            else:
                self.input.setText("" if value is None else _display(value))
                self.input.setCursorPosition(0)  # a long value reads from its start, not "…ion: fov}}"
        finally:
            self.input.blockSignals(blocker[0])
        self._external_error = ""
        self.refresh_error()

    def value(self) -> tuple[Any, str]:
        """``(value, error)``; ``error`` is empty when the value is valid."""
        spec = self.spec
        if spec.kind == "bool":
            return self.input.isChecked(), ""
        if spec.kind == "enum":
            return self.input.currentData(), ""
        if spec.kind == "object":
            errors = self.subform.errors()
            if errors:
                key, message = next(iter(errors.items()))
                return None, f"{key}: {message}"
            return self.subform.values(), ""
        text = self.input.text().strip()
        if not text:
            if spec.nullable:
                return None, ""
            if spec.kind in ("mapping", "list") and spec.default is not NO_DEFAULT:
                return (dict(spec.default) if isinstance(spec.default, dict) else list(spec.default)), ""
            if spec.kind == "str" and not spec.required:
                return "", ""
            if spec.default is not NO_DEFAULT and spec.default is not None:
                return spec.default, ""
            return None, "A value is required."
        try:
            return self._parse(text), ""
        except ValueError as error:
            return None, str(error)

    def _parse(self, text: str) -> Any:
        spec = self.spec
        if spec.kind == "int":
            return self._check_range(_parse_int(text))
        if spec.kind == "float":
            return self._check_range(_parse_float(text))
        if spec.kind == "tuple":
            parts = [p for p in re.split(r"[,\sx\u00d7;]+", text.strip("()[] ")) if p]
            values = [_parse_int(p) if spec.item_kind == "int" else _parse_float(p) for p in parts]
            if spec.length is not None and len(values) != spec.length:
                raise ValueError(f"Give exactly {spec.length} values separated by commas; got {len(values)}.")
            return [self._check_range(v) for v in values]
        if spec.kind in ("mapping", "list", "any"):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ValueError("Not valid YAML; write e.g. {weight_decay: 0.0001} or [T1, T2].") from None
            if spec.kind == "mapping" and not isinstance(value, dict):
                raise ValueError("Expected a mapping such as {key: value}.")
            if spec.kind == "list" and not isinstance(value, list):
                value = [value]
            return value
        return text

    def _check_range(self, v: float) -> Any:
        spec = self.spec
        if spec.minimum is not None and v < spec.minimum:
            raise ValueError(f"Must be \u2265 {_fmt(spec.minimum)}.")
        if spec.exclusive_minimum is not None and v <= spec.exclusive_minimum:
            raise ValueError(f"Must be > {_fmt(spec.exclusive_minimum)}.")
        if spec.maximum is not None and v > spec.maximum:
            raise ValueError(f"Must be \u2264 {_fmt(spec.maximum)}.")
        if spec.exclusive_maximum is not None and v >= spec.exclusive_maximum:
            raise ValueError(f"Must be < {_fmt(spec.exclusive_maximum)}.")
        return v

    # -- errors ---------------------------------------------------------------------------------------
    def error(self) -> str:
        return self.value()[1] or self._external_error

    def set_external_error(self, message: str) -> None:
        self._external_error = message
        self.refresh_error()

    def refresh_error(self) -> None:
        message = self.error()
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))
        if self.input.property("invalid") != bool(message):
            self.input.setProperty("invalid", bool(message))
            self.input.style().unpolish(self.input)
            self.input.style().polish(self.input)


def _parse_int(text: str) -> int:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"'{text}' is not a whole number.") from None
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"'{text}' is not a whole number.")
    return int(value)


def _parse_float(text: str) -> float:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"'{text}' is not a number.") from None
    if not math.isfinite(value):
        raise ValueError("The value must be finite.")
    return value


# ---------------------------------------------------------------------------------------------- the form


class SchemaForm(QWidget):
    """A form for a JSON schema: essential fields, then a collapsible "Advanced" section.

    Args:
        schema: a JSON schema (``core.models.config_schema(cls)`` or ``Model.model_json_schema()``).
        exclude: keys not shown (e.g. those the data fills in).
        defaults: defaults the schema cannot state (``default_factory`` fields), by key.
        collapsible: put the advanced fields behind a "Show advanced settings" toggle.
    """

    changed = Signal()

    def __init__(self, schema: Mapping[str, Any] | None = None, exclude: Iterable[str] = (), collapsible: bool = True,
                 parent: QWidget | None = None, *, defaults: Mapping[str, Any] | None = None,
                 specs: list[FieldSpec] | None = None) -> None:
        super().__init__(parent)
        self.specs = specs if specs is not None else parse_schema(schema or {}, exclude, defaults)
        self.editors: dict[str, FieldEditor] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        essential = [s for s in self.specs if not s.advanced]
        advanced = [s for s in self.specs if s.advanced]
        if not collapsible:
            essential, advanced = self.specs, []
        self.essential_layout = self._form(essential)
        layout.addLayout(self.essential_layout)
        self.advanced_toggle: QToolButton | None = None
        self.advanced_box: QWidget | None = None
        if advanced:
            self.advanced_toggle = QToolButton()
            self.advanced_toggle.setObjectName("AdvancedToggle")
            self.advanced_toggle.setCheckable(True)
            self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
            self.advanced_toggle.setText(f"Advanced settings ({len(advanced)})")
            self.advanced_toggle.setToolTip("Options most runs leave at their defaults")
            self.advanced_toggle.toggled.connect(self.set_advanced_visible)
            layout.addWidget(self.advanced_toggle)
            self.advanced_box = QWidget()
            self.advanced_box.setLayout(self._form(advanced))
            self.advanced_box.setVisible(False)
            layout.addWidget(self.advanced_box)
        layout.addStretch(1)

    @classmethod
    def from_specs(cls, specs: list[FieldSpec], collapsible: bool = True) -> SchemaForm:
        return cls(specs=specs, collapsible=collapsible)

    def _form(self, specs: list[FieldSpec]) -> QFormLayout:
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        form.setHorizontalSpacing(10)
        form.setVerticalSpacing(6)
        for spec in specs:
            editor = FieldEditor(spec)
            editor.changed.connect(self.changed)
            self.editors[spec.key] = editor
            if spec.kind == "object":
                group = QGroupBox(spec.title)
                group.setToolTip(spec.tooltip())
                inner = QVBoxLayout(group)
                inner.addWidget(editor)
                form.addRow(group)
            else:
                label = QLabel(spec.title)
                label.setToolTip(spec.tooltip())
                label.setBuddy(editor.input)
                form.addRow(label, editor)
        return form

    @Slot(bool)
    def set_advanced_visible(self, visible: bool) -> None:
        if self.advanced_box is None or self.advanced_toggle is None:
            return
        self.advanced_box.setVisible(visible)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if visible else Qt.ArrowType.RightArrow)
        if self.advanced_toggle.isChecked() != visible:
            self.advanced_toggle.setChecked(visible)

    # -- values ---------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self.editors)

    def editor(self, key: str) -> FieldEditor:
        return self.editors[key]

    def values(self, changed_only: bool = False) -> dict[str, Any]:
        """Valid values by key (invalid fields are left out; see :meth:`errors`)."""
        out: dict[str, Any] = {}
        for key, editor in self.editors.items():
            value, error = editor.value()
            if error:
                continue
            if changed_only and editor.spec.default is not NO_DEFAULT and _same(value, editor.spec.default):
                continue
            out[key] = value
        return out

    def set_values(self, values: Mapping[str, Any], reset_others: bool = True) -> list[str]:
        """Fill the form; other fields go back to their defaults. Returns keys the form does not have."""
        unknown = [k for k in values if k not in self.editors]
        for key, editor in self.editors.items():
            if key in values:
                editor.set_value(values[key])
            elif reset_others:
                editor.set_value(editor.spec.default if editor.spec.default is not NO_DEFAULT else None)
        advanced_set = [k for k in values if k in self.editors and self.editors[k].spec.advanced
                        and not _same(values[k], self.editors[k].spec.default)]
        if advanced_set:
            self.set_advanced_visible(True)
        self.changed.emit()
        return unknown

    def reset(self) -> None:
        self.set_values({})

    def errors(self) -> dict[str, str]:
        """Field key -> message for every invalid field (typed or handed back by the page)."""
        return {k: e for k, editor in self.editors.items() if (e := editor.error())}

    def typed_errors(self) -> dict[str, str]:
        """Errors of the values as typed (type, range, choices), without those handed back by the page."""
        return {k: e for k, editor in self.editors.items() if (e := editor.value()[1])}

    def is_valid(self) -> bool:
        return not self.errors()

    def set_external_errors(self, errors: Mapping[str, str]) -> None:
        """Flag fields with errors found by ``core`` (clears the earlier ones)."""
        for key, editor in self.editors.items():
            editor.set_external_error(errors.get(key, ""))
        if any(self.editors[k].spec.advanced for k in errors if k in self.editors):
            self.set_advanced_visible(True)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b
